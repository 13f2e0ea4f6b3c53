"""Frozen towers; importing this package registers their builders."""

from chatbridge.models.encoders import audio, image

__all__ = ["audio", "image"]
