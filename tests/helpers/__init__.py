"""Helpers that tests import (tests never import one another): paths, builders, tiny models."""
