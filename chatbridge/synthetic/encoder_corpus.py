"""What the tiny frozen towers learn from: the synthetic world's media with per-frame and per-segment labels.

Inputs go through the package's real processors with the run's settings, so a tower is pretrained on exactly the
tensors the bridge will later feed it (video frames are images through the same transform). Labels come from the
world's ``attributes.json``, including the rendered geometry (``media.Geometry``), never from re-detection:

* Vision, per image or video frame: the shape, its colour in that frame, which of ``POSITION_BINS`` columns and rows
  of the 64-pixel frame its centre falls in, and per patch whether it is covered by the shape (the shape's class),
  empty, or partly covered (ignored). Patch labels give every token a local target, which teaches shape from edges
  where a single label per image would let colour stand in for it (the held-out split pairs known colours with
  known shapes in new ways).
* Audio, per fbank segment: where each beep starts and ends, in fbank frames of that segment, and which of the four
  (pitch, timbre) sounds it is. Counting is learned as local onset detection (``encoder_pretraining``): a count
  read from a whole clip could be guessed from its pitch and timbre, which is exactly what held-out clips break.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from chatbridge.data.processors.audio import AudioProcessor
from chatbridge.data.processors.fbank import (
    choose_from_groups,
    normalize_fbank,
    pad_length,
    split_into_groups,
    waveform_to_fbank,
)
from chatbridge.data.processors.image import ImageProcessor, decode_image
from chatbridge.synthetic.items import COLOURS, PITCHES, SHAPES, TIMBRES
from chatbridge.synthetic.layout import ATTRIBUTES_NAME
from chatbridge.synthetic.media import (
    AUDIOS_DIR,
    FRAMES_DIR,
    IMAGE_SIZE,
    IMAGES_DIR,
    NUM_FRAMES,
    SAMPLE_RATE,
    frame_colour,
    frame_name,
    shape_mask,
)

POSITION_BINS = 5
"""Columns and rows of the 64-pixel frame a centre is binned into: the world's five nominal positions (16, 32, 48
plus jitter) fall inside single bins, and a moving shape crosses all five."""
BACKGROUND = len(SHAPES)
"""Patch class of an empty patch (the shapes are 0 .. len(SHAPES) - 1)."""
COVERED = 0.25
"""A patch at least this much covered by the shape is labelled with the shape; less (but not 0) is ignored."""
IGNORE = -100
"""Label of an ambiguous patch or of an attribute a sample does not show (cross-entropy's ignore_index)."""
SOUNDS = list(itertools.product(PITCHES, TIMBRES))
"""The four (pitch, waveform) sounds; a time step's sound class is 1 + its index here, 0 is silence."""
FBANK_HOP_SECONDS = 0.010
FBANK_WINDOW_SECONDS = 0.025
"""Frame shift and window of the Kaldi fbank (``fbank.waveform_to_fbank``), to place beeps in fbank frames."""


@dataclass
class VisionCorpus:
    """Labelled images and video frames, N of them.

    Attributes:
        pixels: (N, 3, S, S) processor outputs.
        grey_pixels: (N, 3, S, S) the same images in greyscale (luminance in every channel), for colour-blind copies.
        labels: (N, 4) shape, colour, x bin, y bin.
        patch_labels: (N, G*G) per patch (row-major, as the tokens): shape class, ``BACKGROUND`` or ``IGNORE``.
        kinds: "image" or "video" per sample.
        media: (media id, frame index or -1) per sample.
    """

    pixels: Tensor
    grey_pixels: Tensor
    labels: Tensor
    patch_labels: Tensor
    kinds: list[str]
    media: list[tuple[str, int]]


@dataclass
class AudioCorpus:
    """Labelled fbank segments, N of them (every segment of every clip, also those evaluation would skip).

    Attributes:
        fbank: (N, T, F) normalized fbank segments, T = the processor's ``target_length``.
        beeps: per segment, the [start, end) fbank frames, relative to the segment, of every beep heard in it (a
            beep that started in the previous segment has start < 0, one that goes on into the next has end > T).
        sounds: (N,) sound class of the clip (1 + index into ``SOUNDS``).
        content: (N,) frames of real audio in the segment (the rest is zero padding).
        clips: (clip id, beep count of the clip) per segment.
        kept: (N,) whether the processor keeps this segment at evaluation ("middle" mode).
    """

    fbank: Tensor
    beeps: list[list[tuple[int, int]]]
    sounds: Tensor
    content: Tensor
    clips: list[tuple[str, int]]
    kept: Tensor


def _attributes(root: Path, kind: str, split: str) -> dict[str, dict]:
    table = json.loads((root / ATTRIBUTES_NAME).read_text())[kind]
    return {media_id: entry for media_id, entry in table.items() if entry["split"] == split}


def _bin(coordinate: float) -> int:
    return min(int(coordinate * POSITION_BINS // IMAGE_SIZE), POSITION_BINS - 1)


def _patch_labels(shape: str, centre: list[int], radius: int, grid: int) -> Tensor:
    """Per patch of a ``grid`` x ``grid`` token grid: the shape's class, ``BACKGROUND`` or ``IGNORE``."""
    mask = torch.from_numpy(shape_mask(shape, centre, radius)).float()[None, None]  # (1, 1, 64, 64)
    coverage = F.adaptive_avg_pool2d(mask, grid).flatten()  # (G*G,)
    labels = torch.full_like(coverage, IGNORE, dtype=torch.long)
    labels[coverage >= COVERED] = SHAPES.index(shape)
    labels[coverage == 0] = BACKGROUND
    return labels


@dataclass(frozen=True)
class _Picture:
    """One image or video frame with what it shows."""

    path: Path
    kind: str
    shape: str
    colour: str
    centre: list[int]
    radius: int
    media: tuple[str, int]


def _pictures(root: Path, split: str) -> list[_Picture]:
    """Every image and every video frame of a split, in the order of ``attributes.json``."""
    pictures = []
    for media_id, entry in _attributes(root, "image", split).items():
        geometry = entry["geometry"]
        pictures.append(
            _Picture(
                root / IMAGES_DIR / media_id,
                "image",
                entry["shape"],
                entry["colour"],
                geometry["centre"],
                geometry["radius"],
                (media_id, -1),
            )
        )
    for media_id, entry in _attributes(root, "video", split).items():
        geometry = entry["geometry"]
        for frame in range(NUM_FRAMES):
            pictures.append(
                _Picture(
                    root / FRAMES_DIR / media_id / frame_name(frame),
                    "video",
                    entry["shape"],
                    frame_colour(entry["colour"], entry["end_colour"], frame),
                    geometry["centres"][frame],
                    geometry["radius"],
                    (media_id, frame),
                )
            )
    return pictures


def _greyscale(processor: ImageProcessor, path: Path) -> Tensor:
    pixels = decode_image(path)  # (3, H, W) in [0, 1]
    luminance = 0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]
    return processor.transform([luminance.expand(3, -1, -1)])[0]


def vision_corpus(root: Path, split: str, processor: ImageProcessor, patch_size: int) -> VisionCorpus:
    """Every image and video frame of ``split`` ("train" or "eval") of the world under ``root``, labelled."""
    pictures = _pictures(Path(root), split)
    grid = processor.image_size // patch_size
    labels = [
        [SHAPES.index(p.shape), list(COLOURS).index(p.colour), _bin(p.centre[0]), _bin(p.centre[1])] for p in pictures
    ]
    return VisionCorpus(
        pixels=torch.stack([processor(p.path) for p in pictures]),
        grey_pixels=torch.stack([_greyscale(processor, p.path) for p in pictures]),
        labels=torch.tensor(labels),
        patch_labels=torch.stack([_patch_labels(p.shape, p.centre, p.radius, grid) for p in pictures]),
        kinds=[p.kind for p in pictures],
        media=[p.media for p in pictures],
    )


def fbank_frame(sample: int) -> int:
    """The first fbank frame whose 25 ms window is centred at or after ``sample`` (of the world's audio)."""
    return math.ceil((sample / SAMPLE_RATE - FBANK_WINDOW_SECONDS / 2) / FBANK_HOP_SECONDS)


def _segments(processor: AudioProcessor, path: Path) -> tuple[Tensor, int, list[int]]:
    """Every ``target_length`` slice of a clip's padded fbank as ``AudioProcessor`` cuts it, the clip's frame count,
    and the slices it keeps at evaluation."""
    waveform = processor.load_waveform(path)
    fbank = waveform_to_fbank(waveform, processor.sample_rate, processor.num_mel_bins)
    fbank = normalize_fbank(fbank, processor.fbank_mean, processor.fbank_std)  # (T, F)
    frames, length = fbank.shape[0], processor.target_length
    pad = pad_length(frames, processor.num_segments, length, processor.extra_segment_on_exact_multiple)
    padded = F.pad(fbank, (0, 0, 0, pad))
    count = padded.shape[0] // length
    kept = choose_from_groups(split_into_groups(list(range(count)), processor.num_segments), "middle", None)
    return padded.view(count, length, -1), frames, kept


def audio_corpus(root: Path, split: str, processor: AudioProcessor) -> AudioCorpus:
    """Every fbank segment of every stand-alone and background clip of ``split`` of the world under ``root``."""
    fbank, beeps, sounds, content, clips, kept = [], [], [], [], [], []
    length = processor.target_length
    for clip_id, entry in _attributes(Path(root), "audio", split).items():
        segments, frames, kept_slices = _segments(processor, Path(root) / AUDIOS_DIR / f"{clip_id}.wav")
        spans = [(fbank_frame(start), fbank_frame(end)) for start, end in entry["geometry"]["beeps"]]
        for index, segment in enumerate(segments):
            offset = index * length
            fbank.append(segment)
            heard = [(start, end) for start, end in spans if start < offset + length and end > offset]
            beeps.append([(start - offset, end - offset) for start, end in heard])
            sounds.append(1 + SOUNDS.index((entry["pitch"], entry["timbre"])))
            content.append(int(np.clip(frames - offset, 0, length)))
            clips.append((clip_id, entry["count"]))
            kept.append(index in kept_slices)
    return AudioCorpus(
        torch.stack(fbank), beeps, torch.tensor(sounds), torch.tensor(content), clips, torch.tensor(kept)
    )
