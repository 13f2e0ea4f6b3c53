"""Media processors; importing this package registers their builders."""

from chatbridge.data.processors import audio, image, imagebind, video

__all__ = ["audio", "image", "imagebind", "video"]
