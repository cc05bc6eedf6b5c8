"""Foundations of every layer: atomic files, user-facing errors, fingerprints, resumable work."""
