"""Image preprocessing: file -> (3, S, S) CLIP-normalised tensor, as the reference trained.

See docs/reference/chatbridge.md §4.5. Every processor has one call signature, `(source, train, generator)`, and
states the shape of what it returns (`block_shape`), which the data layer needs to reserve soft-token slots.

The reference decoded with PIL, converted to a [0, 1] tensor and resized *the tensor* to a square with torchvision
0.13, which did not antialias tensor resizes. torchvision's tensor resize is `torch.nn.functional.interpolate`
(bilinear, `align_corners=False`), so calling it directly with `antialias=False` reproduces the reference without
depending on torchvision's changing defaults. The aspect ratio is not kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.errors import MediaError, decoding, require_file, require_setting
from chatbridge.registry import PROCESSORS

ImageSource = str | os.PathLike | BinaryIO | Image.Image
"""A file path, an open binary stream (e.g. a tar member's bytes) or an already decoded image."""

AUGMENT_AREA_RANGE = (0.8, 1.0)
"""RandomResizedCrop area fraction of the reference's (unused) `crop_flip` transform; its aspect ratio is 1."""


@dataclass(frozen=True)
class CropDraw:
    """One RandomResizedCrop + horizontal-flip draw, in units relative to the frame.

    Relative units let every frame of a video share one draw (a crop that jumps between frames would be noise),
    even for frame folders whose files differ in size.
    """

    area: float
    """Fraction of the frame's area kept."""
    top: float
    """Position in [0, 1) within the free vertical room."""
    left: float
    """Position in [0, 1) within the free horizontal room."""
    flip: bool
    """Mirror left-right."""


def draw_crop(generator: torch.Generator | None) -> CropDraw:
    """Draws crop and flip parameters from an explicit generator (None is refused: no hidden global RNG)."""
    if generator is None:
        raise ValueError("augmentation needs an explicit torch.Generator")
    area_draw, top, left, flip_draw = torch.rand(4, generator=generator).tolist()
    low, high = AUGMENT_AREA_RANGE
    return CropDraw(area=low + (high - low) * area_draw, top=top, left=left, flip=flip_draw < 0.5)


def apply_crop(pixels: torch.Tensor, draw: CropDraw) -> torch.Tensor:
    """Crops a square of `draw.area` of the frame (3, H, W) -> (3, side, side), then maybe flips it.

    torchvision re-draws when the square does not fit a very elongated frame; clamping the side to the short edge
    instead keeps one draw valid for every frame, at the cost of a slightly different distribution there.
    """
    height, width = pixels.shape[-2:]
    side = max(1, min(round(math.sqrt(draw.area * height * width)), height, width))
    top = int(draw.top * (height - side + 1))
    left = int(draw.left * (width - side + 1))
    crop = pixels[:, top : top + side, left : left + side]
    return crop.flip(-1) if draw.flip else crop


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1], exactly torchvision's `ToTensor` (uint8 / 255)."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3), a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


def decode_image(source: ImageSource, max_pixels: int | None = None) -> torch.Tensor:
    """Decodes an image to (3, H, W) in [0, 1]; grey, palette and RGBA files become RGB.

    Memory is bounded before decoding: an image of more than `max_pixels` is decoded at a reduced size when the
    format allows it (JPEG's DCT scaling, by a power of two) and refused otherwise. Images within the limit decode
    exactly as the reference decoded them.

    Raises:
        MediaError: "missing", "empty", "too_large", or "undecodable" for anything PIL rejects (unknown format,
            truncated data, decompression bomb, plugin-specific SyntaxError/ValueError).
    """
    if isinstance(source, Image.Image):
        return pil_to_tensor(source)
    if isinstance(source, str | os.PathLike):
        source = require_file(source)
    with decoding(source), Image.open(source) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            _reduce_or_refuse(image, max_pixels, source)
        image.load()  # PIL decodes lazily; force it so that truncation surfaces here
        return pil_to_tensor(image)


def _reduce_or_refuse(image: Image.Image, max_pixels: int, source: ImageSource) -> None:
    """Ask a JPEG decoder for a size under `max_pixels`; any other oversized image is refused."""
    if image.format == "JPEG":  # JPEG decodes at 1/2, 1/4 or 1/8 of its size
        scale = min(8, 2 ** math.ceil(math.log2(math.sqrt(image.width * image.height / max_pixels))))
        image.draft("RGB", (image.width // scale, image.height // scale))
        if image.width * image.height <= max_pixels:
            return
    raise MediaError(
        "too_large", source, f"{image.width}x{image.height} pixels, over processor.max_image_pixels = {max_pixels}"
    )


class ImageProcessor:
    """Image or frames -> resized, optionally augmented, CLIP-normalised float32 tensors.

    Args:
        image_size: Square output side S.
        mean: Per-channel normalisation mean (3 values).
        std: Per-channel normalisation std (3 values).
        antialias: Antialiased resize; False reproduces the reference.
        augment: RandomResizedCrop (area 0.8-1, ratio 1) + horizontal flip before the resize, in training only.
        max_pixels: Larger images are decoded reduced (JPEG) or refused before decoding (`decode_image`).
    """

    def __init__(  # noqa: PLR0913 - the transform's settings, one argument each
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        antialias: bool,
        augment: bool,
        max_pixels: int | None = None,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.antialias = antialias
        self.augment = augment
        self.max_pixels = max_pixels

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one output: (3, S, S)."""
        return (3, self.image_size, self.image_size)

    def __call__(
        self, source: ImageSource, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """An image -> (3, S, S); in training with `augment`, `generator` drives the crop and is required."""
        return self.transform([decode_image(source, self.max_pixels)], train, generator)[0]

    def transform(
        self, frames: Sequence[torch.Tensor], train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Frames, each (3, H, W) in [0, 1] -> (N, 3, S, S); one augmentation draw is shared by all frames."""
        draw = draw_crop(generator) if self.augment and train else None
        resized = [self.resize(frame if draw is None else apply_crop(frame, draw)) for frame in frames]
        return (torch.stack(resized) - self.mean) / self.std

    def resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, H, W) -> (3, S, S), bilinear, aspect ratio not kept (torchvision's tensor `Resize((S, S))`)."""
        size = (self.image_size, self.image_size)
        return F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=self.antialias)[0]


@PROCESSORS.register("clip_image")
def build_clip_image(cfg: ProcessorConfig) -> ImageProcessor:
    """The reference's image transform: square resize, the encoder's mean/std, augmentation if `cfg.augment`."""
    return ImageProcessor(
        image_size=require_setting(cfg, "image_size"),
        mean=require_setting(cfg, "mean"),
        std=require_setting(cfg, "std"),
        antialias=cfg.antialias,
        augment=cfg.augment,
        max_pixels=cfg.max_image_pixels,
    )
