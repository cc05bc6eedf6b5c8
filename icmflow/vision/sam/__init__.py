"""Segment Anything: checked checkpoints, one model per process, and a faster mask decoder."""
