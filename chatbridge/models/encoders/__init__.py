"""Frozen encoders; importing this package registers their builders (one line per encoder file)."""

from chatbridge.models.encoders import beats, eva, imagebind

__all__ = ["beats", "eva", "imagebind"]
