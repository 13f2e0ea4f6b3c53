"""Frozen encoders; importing this package registers their builders (one line per encoder file)."""

from chatbridge.models.encoders import beats, eva

__all__ = ["beats", "eva"]
