"""Rendering the synthetic world's media: PNG images, JPEG frame folders and 16 kHz PCM-16 WAV beeps.

Each writer also returns the geometry it drew (where the shape is, which samples hold a beep), so that labels
that depend on the rendering, such as a frame's position or the beeps inside one audio segment, are read from
the ground truth instead of being re-detected from pixels or samples. All randomness comes from the ``rng``
passed in, consumed in a fixed order, so the bytes depend only on the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from chatbridge.synthetic.items import (
    COLOURS,
    DIRECTIONS,
    PITCHES,
    POSITIONS,
    SHAPES,
    AudioItem,
    ImageItem,
    Split,
    VideoItem,
)

IMAGES_DIR = "images"
FRAMES_DIR = "frames"
AUDIOS_DIR = "audios"
IMAGE_SIZE = 64
NUM_FRAMES = 8
SAMPLE_RATE = 16_000
BACKGROUND = (30, 30, 30)
JITTER = 3  # pixels of random offset around the nominal position
TRACK = (10, 54)  # start and end coordinate of a moving shape along its axis
BEEP_SECONDS = 0.12
GAP_SECONDS = 0.1
FADE_SECONDS = 0.005  # ramps that keep beeps free of clicks
EDGE_SECONDS = 0.05  # minimum silence before the first and after the last beep
NOISE_STD = 0.003

Geometry = dict[str, Any]
"""What a writer drew: ``centre`` or ``centres`` (per frame) and ``radius`` in pixels, or ``beeps`` ([start, end)
sample ranges)."""


def frame_name(index: int) -> str:
    """File name of frame ``index`` (0-based) of a frame folder, as the reference's frame loaders expect."""
    return f"img_{index + 1:04d}.jpg"


def _draw_shape(image: Image.Image, shape: str, centre: tuple[int, int], radius: int, colour: str) -> None:
    draw = ImageDraw.Draw(image)
    x, y = centre
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "square":
        draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def shape_mask(shape: str, centre: Sequence[int], radius: int) -> np.ndarray:
    """(IMAGE_SIZE, IMAGE_SIZE) bool mask of the pixels a shape covers, drawn exactly as the writers draw it."""
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0))
    _draw_shape(canvas, shape, (int(centre[0]), int(centre[1])), radius, next(iter(COLOURS)))
    return np.asarray(canvas).any(axis=-1)


def _write_image(root: Path, item: ImageItem, rng: np.random.Generator) -> Geometry:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    x, y = POSITIONS[item.position]
    dx, dy = (int(offset) for offset in rng.integers(-JITTER, JITTER + 1, size=2))
    radius = int(rng.integers(7, 11))
    _draw_shape(image, item.shape, (x + dx, y + dy), radius, item.colour)
    image.save(root / IMAGES_DIR / item.id, format="PNG")
    return {"centre": [x + dx, y + dy], "radius": radius}


def frame_colour(colour: str, end_colour: str, frame: int) -> str:
    """A video shape's colour in frame ``frame``: ``colour``, switching to ``end_colour`` at the middle frame."""
    return colour if frame < NUM_FRAMES // 2 else end_colour


def _write_video(root: Path, item: VideoItem, rng: np.random.Generator) -> Geometry:
    """Write the frame folder: the shape crosses the frame along its direction, changing colour at the middle."""
    folder = root / FRAMES_DIR / item.id
    folder.mkdir(parents=True)
    radius = int(rng.integers(6, 9))
    cross = int(rng.integers(20, 45))  # fixed coordinate on the axis the shape does not move along
    horizontal = item.direction in ("left", "right")
    centres = []
    for frame in range(NUM_FRAMES):
        along = round(TRACK[0] + (TRACK[1] - TRACK[0]) * frame / (NUM_FRAMES - 1))
        along = along if DIRECTIONS[item.direction] > 0 else IMAGE_SIZE - along
        centre = (along, cross) if horizontal else (cross, along)
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        _draw_shape(image, item.shape, centre, radius, frame_colour(item.colour, item.end_colour, frame))
        image.save(folder / frame_name(frame), format="JPEG", quality=90)
        centres.append(list(centre))
    return {"centres": centres, "radius": radius}


def _beep(pitch: str, timbre: str) -> np.ndarray:
    t = np.arange(int(BEEP_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * PITCHES[pitch] * t)
    if timbre == "square":
        wave = 0.6 * np.sign(wave)  # a square wave sounds louder than a sine of the same peak
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / FADE_SECONDS)
    return 0.5 * wave * ramp


def _render_beeps(item: AudioItem, rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
    """A clip of ``item.count`` evenly spaced beeps at a random offset over faint noise: float32 in [-1, 1], and
    the [start, end) sample range of every beep."""
    total = round(item.duration * SAMPLE_RATE)
    beep = _beep(item.pitch, item.timbre)
    step = round((BEEP_SECONDS + GAP_SECONDS) * SAMPLE_RATE)
    span = step * (item.count - 1) + beep.size
    edge = round(EDGE_SECONDS * SAMPLE_RATE)
    start = int(rng.integers(edge, total - span - edge))
    wave = rng.normal(0.0, NOISE_STD, total)
    beeps = []
    for index in range(item.count):
        offset = start + index * step
        wave[offset : offset + beep.size] += beep
        beeps.append([offset, offset + beep.size])
    return wave.astype(np.float32), beeps


def _write_audio(root: Path, item: AudioItem, rng: np.random.Generator) -> Geometry:
    wave, beeps = _render_beeps(item, rng)
    soundfile.write(root / AUDIOS_DIR / f"{item.id}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
    return {"beeps": beeps}


def write_media(root: Path, split: Split, rng: np.random.Generator) -> dict[str, dict[str, Geometry]]:
    """Render every item of ``split`` under ``root``; returns the geometry per media kind and id."""
    for folder in (IMAGES_DIR, FRAMES_DIR, AUDIOS_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return {
        "image": {image.id: _write_image(root, image, rng) for image in split.images},
        "video": {video.id: _write_video(root, video, rng) for video in split.videos},
        "audio": {audio.id: _write_audio(root, audio, rng) for audio in split.audios + split.backgrounds},
    }
