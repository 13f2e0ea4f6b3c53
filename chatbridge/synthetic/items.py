"""What the synthetic world is made of: its attribute vocabulary, its media items and how they are drawn.

Every caption, answer and pixel of the world follows from these attributes. The held-out split is defined here as
attribute *combinations* that no training item has (``HELD_OUT_IMAGE``, ``HELD_OUT_VIDEO``, ``HELD_OUT_AUDIO``);
every single value still occurs in training, so held-out scores measure composition, not unseen words.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (16, 32),
    "right": (48, 32),
    "top": (32, 16),
    "bottom": (32, 48),
    "center": (32, 32),
}
WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
DIRECTIONS: dict[str, int] = {"left": -1, "right": 1, "up": -1, "down": 1}  # sign of the motion along its axis
PITCHES: dict[str, float] = {"low": 440.0, "high": 1320.0}
TIMBRES: dict[str, str] = {"sine": "pure", "square": "buzzy"}  # waveform -> the word captions use for it
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
COUNT_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
DURATIONS = (1.0, 1.5, 2.0, 2.5, 3.0)
COLOUR_CHANGE_PROBABILITY = 0.5

# Attribute combinations reserved for evaluation (see the module docstring). Each shape loses one colour and one
# direction, and each beep count loses one (pitch, timbre) pair, so training still covers every single value.
HELD_OUT_IMAGE = frozenset({("circle", "purple"), ("square", "yellow"), ("triangle", "green")})
HELD_OUT_VIDEO = frozenset({("circle", "up"), ("square", "left"), ("triangle", "down")})
HELD_OUT_AUDIO = frozenset({(1, "high", "square"), (2, "low", "sine"), (3, "low", "square"), (4, "high", "sine")})


@dataclass(frozen=True)
class ImageItem:
    id: str
    shape: str
    colour: str
    position: str


@dataclass(frozen=True)
class VideoItem:
    id: str
    shape: str
    colour: str
    end_colour: str
    """Colour from the middle frame on; equal to ``colour`` when the shape keeps its colour."""
    direction: str


@dataclass(frozen=True)
class AudioItem:
    id: str
    count: int
    pitch: str
    timbre: str
    duration: float


@dataclass(frozen=True)
class Split:
    """The media items of one split (training or held-out)."""

    images: list[ImageItem]
    videos: list[VideoItem]
    audios: list[AudioItem]
    backgrounds: list[AudioItem]
    """Background audio of the first ``len(backgrounds)`` videos; each id equals its video's id."""


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One option, uniformly."""
    return options[int(rng.integers(len(options)))]


def balanced_indices(rng: np.random.Generator, n_options: int, count: int) -> list[int]:
    """Indices that visit every option once before any repeats, so even a tiny world covers all combinations."""
    rounds = -(-count // n_options)
    return [int(index) for _ in range(rounds) for index in rng.permutation(n_options)][:count]


def _combos(space: Iterable[tuple], held_out: frozenset, want_held_out: bool) -> list[tuple]:
    return [combo for combo in space if (combo in held_out) == want_held_out]


def _sample_images(rng: np.random.Generator, count: int, prefix: str, held_out: bool) -> list[ImageItem]:
    combos = _combos(itertools.product(SHAPES, COLOURS), HELD_OUT_IMAGE, held_out)
    positions = list(POSITIONS)
    picks = zip(balanced_indices(rng, len(combos), count), balanced_indices(rng, len(positions), count), strict=True)
    return [
        ImageItem(f"{prefix}_{index:05d}.png", *combos[combo], positions[position])
        for index, (combo, position) in enumerate(picks)
    ]


def _sample_videos(rng: np.random.Generator, count: int, prefix: str, held_out: bool) -> list[VideoItem]:
    combos = _combos(itertools.product(SHAPES, DIRECTIONS), HELD_OUT_VIDEO, held_out)
    videos = []
    for index, combo in enumerate(balanced_indices(rng, len(combos), count)):
        shape, direction = combos[combo]
        colour = pick(rng, list(COLOURS))
        end_colour = colour
        if rng.random() < COLOUR_CHANGE_PROBABILITY:
            end_colour = pick(rng, [other for other in COLOURS if other != colour])
        videos.append(VideoItem(f"{prefix}_{index:05d}", shape, colour, end_colour, direction))
    return videos


def _sample_audios(rng: np.random.Generator, ids: list[str], held_out: bool) -> list[AudioItem]:
    combos = _combos(itertools.product(COUNT_WORDS, PITCHES, TIMBRES), HELD_OUT_AUDIO, held_out)
    picks = balanced_indices(rng, len(combos), len(ids))
    return [
        AudioItem(audio_id, *combos[pick_], pick(rng, DURATIONS)) for audio_id, pick_ in zip(ids, picks, strict=True)
    ]


def sample_split(rng: np.random.Generator, counts: tuple[int, int, int, int], prefix: str, held_out: bool) -> Split:
    """Draw (images, videos, videos with audio, audio clips) items; ``prefix`` keeps split ids disjoint."""
    n_images, n_videos, n_backgrounds, n_audios = counts
    images = _sample_images(rng, n_images, f"{prefix}img", held_out)
    videos = _sample_videos(rng, n_videos, f"{prefix}vid", held_out)
    audio_ids = [f"{prefix}aud_{index:05d}" for index in range(n_audios)]
    audios = _sample_audios(rng, audio_ids, held_out)
    backgrounds = _sample_audios(rng, [video.id for video in videos[:n_backgrounds]], held_out)
    return Split(images, videos, audios, backgrounds)
