"""A deterministic synthetic multimodal world, written in the reference annotation formats.

Why it exists: every CPU test, tiny training run, evaluation and demo needs images, videos and audio with captions,
questions and conversations, and none of the real datasets fit on a laptop. This module draws a small world of
coloured shapes and beeps whose every caption and answer follows from known attributes, so a model that learns
anything shows it, and writes it in exactly the formats the real loaders read (docs/reference/chatbridge.md §4.1-4.4),
so the same loaders run on it unchanged.

Layout under ``root`` (every path inside annotation files and data-opts JSONs is relative; the data-opts JSONs sit
at the root, and their relative paths are resolved against the folder that holds the JSON, i.e. the world root)::

    images/<image_id>                       64x64 PNG; image ids keep the ".png" suffix because the reference
                                            resolver tries ``dir/id`` first
    frames/<video_id>/img_0001.jpg ...      8 JPEG frames per video (``data_format: "frame"``)
    audios/<audio_id>.wav                   16 kHz mono PCM-16 beeps; a video's background audio is
                                            ``audios/<video_id>.wav``
    annotations/stage1/{image,video,audio}.json   VALOR ``pretrain_txt_mapper.json`` format (§4.3)
    annotations/stage2/<name>.json                MULTIS format, one file per task (§4.4, ``STAGE2_FILES``)
    annotations/eval/<name>.json                  held-out split; no data-opts JSON refers to it
    annotations/attributes.json                   ground-truth attributes and split of every media item
    task_prompt.json                              task name -> instruction templates (docs/reference/chatbridge.md §4.2)
    opts_stage1.json, opts_stage2.json            VALOR-style data-opts (docs/reference/chatbridge.md §4.1)
    MANIFEST.json                                 written last: its presence marks a complete world

Held-out split: evaluation media have their own ids (prefix ``ev_``) and are drawn only from attribute
combinations that no training item has: ``HELD_OUT_IMAGE`` (shape, colour) pairs, ``HELD_OUT_VIDEO`` (shape,
direction) pairs and ``HELD_OUT_AUDIO`` (count, pitch, timbre) triples. Every single attribute value still occurs in
training, so the split measures composition, not unseen words. Every evaluation video has background audio.

Determinism: all randomness comes from ``numpy.random.default_rng(seed)`` (split into the ``RNG_STREAMS``, so e.g.
resizing the training split leaves the held-out split unchanged), files are written in a fixed order with no
timestamps, and two generations with the same seed and sizes are byte-identical. No ``.mp4`` is written even when
PyAV is installed, so the bytes never depend on optional packages or encoder versions.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from chatbridge.data.datasets.captions import row_captions
from chatbridge.data.datasets.instructions import parse_task_fields, prompt_key
from chatbridge.data.datasets.valor_opts import parse_task
from chatbridge.data.templates import (
    QUERY_PLACEHOLDER,
    load_instruction_templates,
    render_caption,
    render_conversation,
    render_single_turn,
    sample_instruction,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_TMP_NAME = "MANIFEST.json.tmp"
LOCK_NAME = ".synthetic.lock"
IMAGES_DIR = "images"
FRAMES_DIR = "frames"
AUDIOS_DIR = "audios"
ANNOTATIONS_DIR = "annotations"
TASK_PROMPT_NAME = "task_prompt.json"
ATTRIBUTES_NAME = "annotations/attributes.json"
OPTS_NAMES = {"opts_stage1": "opts_stage1.json", "opts_stage2": "opts_stage2.json"}
# Everything generate_world writes; only these are deleted when a world is regenerated, never other files in root.
OWNED_NAMES = (IMAGES_DIR, FRAMES_DIR, AUDIOS_DIR, ANNOTATIONS_DIR, TASK_PROMPT_NAME, *OPTS_NAMES.values())

IMAGE_SIZE = 64
NUM_FRAMES = 8
SAMPLE_RATE = 16_000
BACKGROUND = (30, 30, 30)
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

# Attribute combinations reserved for evaluation (see the module docstring). Each shape loses one colour and one
# direction, and each beep count loses one (pitch, timbre) pair, so training still covers every single value.
HELD_OUT_IMAGE = frozenset({("circle", "purple"), ("square", "yellow"), ("triangle", "green")})
HELD_OUT_VIDEO = frozenset({("circle", "up"), ("square", "left"), ("triangle", "down")})
HELD_OUT_AUDIO = frozenset({(1, "high", "square"), (2, "low", "sine"), (3, "low", "square"), (4, "high", "sine")})

JITTER = 3  # pixels of random offset around the nominal position
COLOUR_CHANGE_PROBABILITY = 0.5
TRACK = (10, 54)  # start and end coordinate of a moving shape along its axis
BEEP_SECONDS = 0.12
GAP_SECONDS = 0.1
FADE_SECONDS = 0.005  # ramps that keep beeps free of clicks
EDGE_SECONDS = 0.05  # minimum silence before the first and after the last beep
NOISE_STD = 0.003


@dataclass(frozen=True)
class WorldSizes:
    """How many items each part of the world has; the defaults generate in a few seconds on 2 CPU cores."""

    images: int = 120
    """Training images."""
    videos: int = 48
    """Training videos."""
    videos_with_audio: int = 24
    """Training videos that also get a background audio clip (tva samples); at most ``videos``."""
    audios: int = 96
    """Training stand-alone audio clips."""
    eval_images: int = 24
    """Held-out images (each paired with a held-out audio clip for image+audio questions)."""
    eval_videos: int = 16
    """Held-out videos, all with background audio."""
    eval_audios: int = 24
    """Held-out stand-alone audio clips."""
    eval_questions_per_item: int = 2
    """Joint yes/no questions per held-out video and per held-out image."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"WorldSizes.{name} must be >= 1, got {value}")
        if self.videos_with_audio > self.videos:
            raise ValueError(f"WorldSizes.videos_with_audio ({self.videos_with_audio}) exceeds videos ({self.videos})")


SCALES: dict[str, WorldSizes] = {
    "tiny": WorldSizes(images=12, videos=6, videos_with_audio=4, audios=8, eval_images=4, eval_videos=4, eval_audios=4),
    "small": WorldSizes(),
    "medium": WorldSizes(images=600, videos=240, videos_with_audio=120, audios=480, eval_images=96, eval_videos=64),
}


@dataclass(frozen=True)
class WorldManifest:
    """What a generated world contains: ``files`` maps a logical name to a path relative to ``root``.

    Names: ``images``, ``frames``, ``audios`` (media folders), ``task_prompt``, ``attributes``, ``opts_stage1``,
    ``opts_stage2`` and one ``stage1/<x>``, ``stage2/<x>`` or ``eval/<x>`` per annotation file. ``counts`` holds the
    number of rows of each annotation file and the number of media items per kind.
    """

    root: Path
    seed: int
    sizes: WorldSizes
    format_version: int
    files: dict[str, str]
    counts: dict[str, int]

    def path(self, name: str) -> Path:
        """Absolute path of a logical file name."""
        if name not in self.files:
            raise KeyError(f"unknown world file {name!r}; known: {sorted(self.files)}")
        return self.root / self.files[name]

    def to_json(self) -> dict:
        """The manifest file's content; the root is left out so a world can be moved."""
        return {
            "format_version": self.format_version,
            "seed": self.seed,
            "sizes": asdict(self.sizes),
            "files": self.files,
            "counts": self.counts,
        }


def load_manifest(root: Path) -> WorldManifest:
    """Read ``root/MANIFEST.json``; raises ``FileNotFoundError`` if the world is absent or incomplete."""
    data = json.loads((Path(root) / MANIFEST_NAME).read_text())
    return WorldManifest(
        root=Path(root),
        seed=data["seed"],
        sizes=WorldSizes(**data["sizes"]),
        format_version=data["format_version"],
        files=data["files"],
        counts=data["counts"],
    )


# ----------------------------------------------------------------------------------------------- media items


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
class _Split:
    images: list[ImageItem]
    videos: list[VideoItem]
    audios: list[AudioItem]
    backgrounds: list[AudioItem]
    """Background audio of the first ``len(backgrounds)`` videos; each id equals its video's id."""


def _combos(space: Iterable[tuple], held_out: frozenset, want_held_out: bool) -> list[tuple]:
    return [combo for combo in space if (combo in held_out) == want_held_out]


def _balanced_indices(rng: np.random.Generator, n_options: int, count: int) -> list[int]:
    """Indices that visit every option once before any repeats, so even a tiny world covers all combinations."""
    rounds = -(-count // n_options)
    return [int(index) for index in np.concatenate([rng.permutation(n_options) for _ in range(rounds)])[:count]]


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _sample_images(rng: np.random.Generator, count: int, prefix: str, held_out: bool) -> list[ImageItem]:
    combos = _combos(itertools.product(SHAPES, COLOURS), HELD_OUT_IMAGE, held_out)
    positions = list(POSITIONS)
    picks = zip(_balanced_indices(rng, len(combos), count), _balanced_indices(rng, len(positions), count), strict=True)
    return [
        ImageItem(f"{prefix}_{index:05d}.png", *combos[combo], positions[position])
        for index, (combo, position) in enumerate(picks)
    ]


def _sample_videos(rng: np.random.Generator, count: int, prefix: str, held_out: bool) -> list[VideoItem]:
    combos = _combos(itertools.product(SHAPES, DIRECTIONS), HELD_OUT_VIDEO, held_out)
    videos = []
    for index, combo in enumerate(_balanced_indices(rng, len(combos), count)):
        shape, direction = combos[combo]
        colour = _pick(rng, list(COLOURS))
        end_colour = colour
        if rng.random() < COLOUR_CHANGE_PROBABILITY:
            end_colour = _pick(rng, [other for other in COLOURS if other != colour])
        videos.append(VideoItem(f"{prefix}_{index:05d}", shape, colour, end_colour, direction))
    return videos


def _sample_audios(rng: np.random.Generator, ids: list[str], held_out: bool) -> list[AudioItem]:
    combos = _combos(itertools.product(COUNT_WORDS, PITCHES, TIMBRES), HELD_OUT_AUDIO, held_out)
    picks = _balanced_indices(rng, len(combos), len(ids))
    return [
        AudioItem(audio_id, *combos[pick], _pick(rng, DURATIONS)) for audio_id, pick in zip(ids, picks, strict=True)
    ]


def _sample_split(rng: np.random.Generator, counts: tuple[int, int, int, int], prefix: str, held_out: bool) -> _Split:
    """Draw (images, videos, videos with audio, audio clips) items; ``prefix`` keeps split ids disjoint."""
    n_images, n_videos, n_backgrounds, n_audios = counts
    images = _sample_images(rng, n_images, f"{prefix}img", held_out)
    videos = _sample_videos(rng, n_videos, f"{prefix}vid", held_out)
    audio_ids = [f"{prefix}aud_{index:05d}" for index in range(n_audios)]
    audios = _sample_audios(rng, audio_ids, held_out)
    backgrounds = _sample_audios(rng, [video.id for video in videos[:n_backgrounds]], held_out)
    return _Split(images, videos, audios, backgrounds)


# ----------------------------------------------------------------------------------------------- rendering


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


def _write_image(root: Path, item: ImageItem, rng: np.random.Generator) -> None:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    x, y = POSITIONS[item.position]
    dx, dy = (int(offset) for offset in rng.integers(-JITTER, JITTER + 1, size=2))
    _draw_shape(image, item.shape, (x + dx, y + dy), int(rng.integers(7, 11)), item.colour)
    image.save(root / IMAGES_DIR / item.id, format="PNG")


def _write_video(root: Path, item: VideoItem, rng: np.random.Generator) -> None:
    """Write the frame folder: the shape crosses the frame along its direction, changing colour at the middle."""
    folder = root / FRAMES_DIR / item.id
    folder.mkdir(parents=True)
    radius = int(rng.integers(6, 9))
    cross = int(rng.integers(20, 45))  # fixed coordinate on the axis the shape does not move along
    horizontal = item.direction in ("left", "right")
    for frame in range(NUM_FRAMES):
        along = round(TRACK[0] + (TRACK[1] - TRACK[0]) * frame / (NUM_FRAMES - 1))
        along = along if DIRECTIONS[item.direction] > 0 else IMAGE_SIZE - along
        centre = (along, cross) if horizontal else (cross, along)
        colour = item.colour if frame < NUM_FRAMES // 2 else item.end_colour
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        _draw_shape(image, item.shape, centre, radius, colour)
        image.save(folder / f"img_{frame + 1:04d}.jpg", format="JPEG", quality=90)


def _beep(pitch: str, timbre: str) -> np.ndarray:
    t = np.arange(int(BEEP_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * PITCHES[pitch] * t)
    if timbre == "square":
        wave = 0.6 * np.sign(wave)  # a square wave sounds louder than a sine of the same peak
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / FADE_SECONDS)
    return 0.5 * wave * ramp


def _render_beeps(item: AudioItem, rng: np.random.Generator) -> np.ndarray:
    """A clip of ``item.count`` evenly spaced beeps at a random offset over faint noise; float32 in [-1, 1]."""
    total = round(item.duration * SAMPLE_RATE)
    beep = _beep(item.pitch, item.timbre)
    step = round((BEEP_SECONDS + GAP_SECONDS) * SAMPLE_RATE)
    span = step * (item.count - 1) + beep.size
    edge = round(EDGE_SECONDS * SAMPLE_RATE)
    start = int(rng.integers(edge, total - span - edge))
    wave = rng.normal(0.0, NOISE_STD, total)
    for index in range(item.count):
        offset = start + index * step
        wave[offset : offset + beep.size] += beep
    return wave.astype(np.float32)


def _write_audio(root: Path, item: AudioItem, rng: np.random.Generator) -> None:
    soundfile.write(root / AUDIOS_DIR / f"{item.id}.wav", _render_beeps(item, rng), SAMPLE_RATE, subtype="PCM_16")


def _write_media(root: Path, split: _Split, rng: np.random.Generator) -> None:
    for folder in (IMAGES_DIR, FRAMES_DIR, AUDIOS_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image in split.images:
        _write_image(root, image, rng)
    for video in split.videos:
        _write_video(root, video, rng)
    for audio in split.audios + split.backgrounds:
        _write_audio(root, audio, rng)


# ----------------------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class _Fact:
    question: str
    short: str
    """One-word answer for short QA."""
    sentence: str
    """Full-sentence answer for conversations."""


def _image_captions(item: ImageItem) -> list[str]:
    where = WHERE[item.position]
    return [
        f"a {item.colour} {item.shape} {where}",
        f"a {item.shape} coloured {item.colour} {where} of the picture",
        f"a {item.colour} {item.shape} {where}, on a plain dark background",
    ]


def _video_captions(item: VideoItem) -> list[str]:
    colour, end, shape, direction = item.colour, item.end_colour, item.shape, item.direction
    changes = end != colour
    return [
        f"a {colour} {shape} moving {direction}" + (f" that turns {end}" if changes else ""),
        f"a {colour} {shape} travels {direction} across the frame"
        + (f" and changes to {end} halfway" if changes else ""),
        f"a {shape} slides {direction}" + (f", changing from {colour} to {end}" if changes else f" and stays {colour}"),
    ]


def _audio_captions(item: AudioItem) -> list[str]:
    count, noun, timbre = COUNT_WORDS[item.count], "beep" if item.count == 1 else "beeps", TIMBRES[item.timbre]
    return [
        f"{count} {item.pitch} {noun}",
        f"{count} {item.pitch}-pitched {timbre} {noun}",
        f"a {timbre} tone beeping {COUNT_TIMES[item.count]} at a {item.pitch} pitch",
    ]


def _beep_phrase(count: int) -> str:
    return f"{COUNT_WORDS[count]} beep" + ("" if count == 1 else "s")


def _image_facts(item: ImageItem) -> list[_Fact]:
    return [
        _Fact("what colour is the shape?", item.colour, f"The {item.shape} is {item.colour}."),
        _Fact("what shape is shown?", item.shape, f"It is a {item.shape}."),
        _Fact("where is the shape?", item.position, f"The {item.shape} is {WHERE[item.position]} of the image."),
    ]


def _video_facts(item: VideoItem) -> list[_Fact]:
    changes = item.end_colour != item.colour
    change_sentence = f"Yes, it turns {item.end_colour} halfway." if changes else f"No, it stays {item.colour}."
    return [
        _Fact("what colour is the shape at the start?", item.colour, f"It starts out {item.colour}."),
        _Fact("what shape is moving?", item.shape, f"A {item.shape} is moving."),
        _Fact("which direction does the shape move?", item.direction, f"It moves {item.direction}."),
        _Fact("does the shape change colour?", "yes" if changes else "no", change_sentence),
        _Fact("what colour is the shape at the end?", item.end_colour, f"It ends up {item.end_colour}."),
    ]


def _audio_facts(item: AudioItem) -> list[_Fact]:
    timbre = TIMBRES[item.timbre]
    return [
        _Fact("how many beeps are there?", COUNT_WORDS[item.count], f"I hear {_beep_phrase(item.count)}."),
        _Fact("are the beeps high or low?", item.pitch, f"The beeps are {item.pitch}-pitched."),
        _Fact("do the beeps sound pure or buzzy?", timbre, f"They sound {timbre}."),
    ]


def _describe(request: str, caption: str) -> _Fact:
    return _Fact(request, caption, caption[0].upper() + caption[1:] + ".")


def _turns(tags: str, facts: Sequence[_Fact]) -> list[dict]:
    """LLaVA-format messages; the modality tags open the first human message, as in LLaVA."""
    turns = []
    for index, fact in enumerate(facts):
        question = fact.question[0].upper() + fact.question[1:]
        turns.append({"from": "human", "value": tags + question if index == 0 else question})
        turns.append({"from": "gpt", "value": fact.sentence})
    return turns


def _pick_facts(rng: np.random.Generator, facts: Sequence[_Fact]) -> list[_Fact]:
    """Two or three distinct facts in random order: the 2-3 turns of one conversation."""
    count = int(rng.integers(2, 4))
    return [facts[int(index)] for index in rng.permutation(len(facts))[:count]]


def _caption_field(rng: np.random.Generator, index: int, captions: list[str], key: str) -> dict:
    """Every tenth row carries the whole caption list (our loaders accept lists), the rest one random caption."""
    return {key: captions if index % 10 == 9 else _pick(rng, captions)}


# ----------------------------------------------------------------------------------------------- annotation files


def _stage1_rows(rng: np.random.Generator, items: Sequence, captions_of: Callable[..., list[str]]) -> list[dict]:
    """VALOR rows: mostly ``desc``, ``caption`` on rows 2 and 5 of every ten, a caption list on row 9."""
    rows = []
    for index, item in enumerate(items):
        key = "caption" if index % 10 in (2, 5) else "desc"
        rows.append({"video_id": item.id, **_caption_field(rng, index, captions_of(item), key)})
    return rows


def _stage1_annotations(rng: np.random.Generator, split: _Split) -> dict[str, list[dict]]:
    return {
        "stage1/image": _stage1_rows(rng, split.images, _image_captions),
        "stage1/video": _stage1_rows(rng, split.videos, _video_captions),
        "stage1/audio": _stage1_rows(rng, split.audios, _audio_captions),
    }


def _id_stem(media_id: str) -> str:
    return media_id.removesuffix(".png")


def _qa_rows(items: Sequence, id_key: str, facts_of: Callable[..., list[_Fact]]) -> list[dict]:
    """One row per fact; every tenth item instead gets one row with parallel question/answer lists."""
    rows = []
    for index, item in enumerate(items):
        facts = facts_of(item)
        if index % 10 == 9:
            questions, answers = [fact.question for fact in facts], [fact.short for fact in facts]
            rows.append(
                {"question_id": f"{_id_stem(item.id)}_q", id_key: item.id, "question": questions, "answer": answers}
            )
            continue
        for number, fact in enumerate(facts):
            qa = {"question": fact.question, "answer": fact.short}
            rows.append({"question_id": f"{_id_stem(item.id)}_q{number}", id_key: item.id, **qa})
    return rows


def _cap_rows(rng: np.random.Generator, items: Sequence, id_key: str, captions_of: Callable) -> list[dict]:
    return [
        {id_key: item.id, **_caption_field(rng, index, captions_of(item), "caption")}
        for index, item in enumerate(items)
    ]


def _conv_rows(rng: np.random.Generator, items: Sequence, id_key: str, tag: str, facts_of: Callable) -> list[dict]:
    return [
        {
            "id": f"{_id_stem(item.id)}_conv",
            id_key: item.id,
            "conversations": _turns(tag, _pick_facts(rng, facts_of(item))),
        }
        for item in items
    ]


def _image_describe_facts(item: ImageItem) -> list[_Fact]:
    return [*_image_facts(item), _describe("describe the image briefly.", _image_captions(item)[0])]


def _video_describe_facts(item: VideoItem) -> list[_Fact]:
    return [*_video_facts(item), _describe("what happens in the video?", _video_captions(item)[0])]


def _audio_describe_facts(item: AudioItem) -> list[_Fact]:
    return [*_audio_facts(item), _describe("what do you hear?", _audio_captions(item)[0])]


def _av_caption(rng: np.random.Generator, video: VideoItem, audio: AudioItem) -> str:
    return f"{_pick(rng, _video_captions(video))}, with {_pick(rng, _audio_captions(audio))}"


def _av_rows(rng: np.random.Generator, split: _Split) -> tuple[list[dict], list[dict]]:
    """tva captioning and conversation rows; each conversation asks about both the video and its audio."""
    captions, conversations = [], []
    for video, audio in zip(split.videos, split.backgrounds, strict=False):  # only the first videos have audio
        captions.append({"video_id": video.id, "caption": _av_caption(rng, video, audio)})
        facts = [_pick(rng, _video_facts(video)), _pick(rng, _audio_facts(audio))]
        if rng.random() < 0.5:
            facts.append(_describe("describe what you see and hear.", _av_caption(rng, video, audio)))
        order = [facts[int(index)] for index in rng.permutation(len(facts))]
        conversations.append(
            {"id": f"{video.id}_avconv", "video_id": video.id, "conversations": _turns("<video>\n<audio>\n", order)}
        )
    return captions, conversations


def _stage2_annotations(rng: np.random.Generator, split: _Split) -> dict[str, list[dict]]:
    """MULTIS files; ids are ``image_id`` for images and ``video_id`` for videos and audio, as the loader reads."""
    av_cap, av_conv = _av_rows(rng, split)
    return {
        "stage2/image_cap": _cap_rows(rng, split.images, "image_id", _image_captions),
        "stage2/image_qa": _qa_rows(split.images, "image_id", _image_facts),
        "stage2/image_conv": _conv_rows(rng, split.images, "image_id", "<image>\n", _image_describe_facts),
        "stage2/video_cap": _cap_rows(rng, split.videos, "video_id", _video_captions),
        "stage2/video_qa": _qa_rows(split.videos, "video_id", _video_facts),
        "stage2/video_conv": _conv_rows(rng, split.videos, "video_id", "<video>\n", _video_describe_facts),
        "stage2/audio_cap": _cap_rows(rng, split.audios, "video_id", _audio_captions),
        "stage2/audio_conv": _conv_rows(rng, split.audios, "video_id", "<audio>\n", _audio_describe_facts),
        "stage2/av_cap": av_cap,
        "stage2/av_conv": av_conv,
    }


# A claim is a yes/no statement about one attribute: (template with one "{}", true value, every possible value).
_Claim = tuple[str, str, Sequence[str]]


def _image_claims(item: ImageItem) -> list[_Claim]:
    return [
        ("is the shape a {}", item.shape, SHAPES),
        ("is the shape {}", item.colour, list(COLOURS)),
        ("is the shape {}", WHERE[item.position], list(WHERE.values())),
    ]


def _video_claims(item: VideoItem) -> list[_Claim]:
    return [
        ("is the moving shape a {}", item.shape, SHAPES),
        ("is the moving shape {} at the start", item.colour, list(COLOURS)),
        ("does the shape move {}", item.direction, list(DIRECTIONS)),
    ]


def _audio_claims(item: AudioItem) -> list[_Claim]:
    return [
        ("do you hear {}", _beep_phrase(item.count), [_beep_phrase(count) for count in COUNT_WORDS]),
        ("are the beeps {}", item.pitch, list(PITCHES)),
        ("do the beeps sound {}", TIMBRES[item.timbre], list(TIMBRES.values())),
    ]


def _claim_text(rng: np.random.Generator, claims: list[_Claim], truth: bool) -> str:
    template, value, values = _pick(rng, claims)
    if not truth:
        value = _pick(rng, [other for other in values if other != value])
    return template.format(value)


def _joint_question(rng: np.random.Generator, visual: list[_Claim], audio: list[_Claim]) -> tuple[str, str]:
    """A question that needs both modalities; half the answers are "yes", the rest falsify one side."""
    case = int(rng.integers(4))  # 0, 1: both claims true; 2: visual claim false; 3: audio claim false
    question = f"{_claim_text(rng, visual, truth=case != 2)} and {_claim_text(rng, audio, truth=case != 3)}?"
    return question, "yes" if case < 2 else "no"


def _joint_rows(
    rng: np.random.Generator, pairs: Iterable[tuple], visual_key: str, claims_of: Callable, per_item: int
) -> list[dict]:
    rows = []
    for visual, audio in pairs:
        for number in range(per_item):
            question, answer = _joint_question(rng, claims_of(visual), _audio_claims(audio))
            ids = {"question_id": f"{_id_stem(visual.id)}_q{number}", visual_key: visual.id, "audio": audio.id}
            rows.append({**ids, "question": question, "answer": answer})
    return rows


def _eval_annotations(rng: np.random.Generator, split: _Split, per_item: int) -> dict[str, list[dict]]:
    """Held-out files: joint yes/no questions (video+audio, image+audio) and captions with all references.

    The joint rows follow MUSIC-AVQA's shape (visual id, ``audio``, ``question``, ``answer``); the audio captions
    follow Clotho's ``audio`` key (§4.7). Each held-out image is paired with a held-out audio clip.
    """
    image_pairs = [(image, split.audios[index % len(split.audios)]) for index, image in enumerate(split.images)]
    return {
        "eval/tva_qa": _joint_rows(
            rng, zip(split.videos, split.backgrounds, strict=True), "video_id", _video_claims, per_item
        ),
        "eval/tia_qa": _joint_rows(rng, image_pairs, "image_id", _image_claims, per_item),
        "eval/image_cap": [{"image_id": item.id, "caption": _image_captions(item)} for item in split.images],
        "eval/video_cap": [{"video_id": item.id, "caption": _video_captions(item)} for item in split.videos],
        "eval/audio_cap": [{"audio": item.id, "caption": _audio_captions(item)} for item in split.audios],
    }


# ----------------------------------------------------------------------------------------------- prompts and opts

# Our own wording (§4.2 keeps only the key set and the <QUESTION> placeholder of the reference file).
TASK_PROMPTS: dict[str, list[str]] = {
    "ti-cap": [
        "Describe the image in one short sentence.",
        "Write a brief caption for this picture.",
        "What does the image show? Answer in one sentence.",
        "Summarize the content of the image in a few words.",
    ],
    "ti-shortqa": [
        "Look at the image and answer with a single word: <QUESTION>",
        "Answer the question about the picture in one word. <QUESTION>",
        "Based on the image, give a one-word answer to this question: <QUESTION>",
    ],
    "tv-cap": [
        "Describe what happens in the video in one sentence.",
        "Write a short caption for this clip.",
        "Summarize the video briefly.",
        "What is going on in this video? Answer in one sentence.",
    ],
    "tv-shortqa": [
        "Watch the video and answer with a single word: <QUESTION>",
        "Answer the question about the clip in one word. <QUESTION>",
        "Based on the video, give a one-word answer to this question: <QUESTION>",
    ],
    "ta-cap": [
        "Listen to the audio and describe it in one sentence.",
        "Write a short caption for this sound.",
        "What can be heard in this recording? Answer briefly.",
        "Summarize the audio clip in a few words.",
    ],
    "tva-cap": [
        "Describe what you see and hear in this video in one sentence.",
        "Write a short caption covering both the picture and the sound.",
        "Summarize the video together with its background audio.",
        "What happens on screen, and what does the soundtrack contain? Answer in one sentence.",
    ],
}

# (annotation key, task, datatype) of every training file; the stage-2 names follow §4.2's task names.
STAGE1_FILES = (("stage1/image", "ti", "image"), ("stage1/video", "ti", "video"), ("stage1/audio", "ta", "audio"))
STAGE2_FILES = (
    ("stage2/image_cap", "ti-cap", "image"),
    ("stage2/image_qa", "ti-shortqa", "image"),
    ("stage2/image_conv", "ti-conv", "image"),
    ("stage2/video_cap", "tv-cap", "video"),
    ("stage2/video_qa", "tv-shortqa", "video"),
    ("stage2/video_conv", "tv-conv", "video"),
    ("stage2/audio_cap", "ta-cap", "audio"),
    ("stage2/audio_conv", "ta-conv", "audio"),
    ("stage2/av_cap", "tva-cap", "video"),
    ("stage2/av_conv", "tva-conv", "video"),
)
# One random stream per part, so e.g. changing the training sizes leaves the held-out split unchanged.
RNG_STREAMS = ("train", "eval", "train_media", "eval_media", "stage1", "stage2", "eval_text")
VIDEO_SAMPLE_NUM = 4  # frames drawn per video, as in the reference configs


def _loader_group(key: str, task: str, datatype: str, steps: int) -> dict:
    """One VALOR loader group; ``steps`` (the sampling weight) is the file's row count."""
    with_audio = task.startswith("tva")
    dataset: dict[str, str] = {"name": "synthetic_" + key.replace("/", "_"), "txt": f"{ANNOTATIONS_DIR}/{key}.json"}
    if datatype != "audio":
        dataset["video"] = IMAGES_DIR if datatype == "image" else FRAMES_DIR
    if datatype == "audio" or with_audio:
        dataset["audio"] = AUDIOS_DIR
    dataset["datatype"] = datatype
    batch_size = 4 if task.endswith("-conv") else 8  # conversations are ~3x longer
    group = {"datasets": [dataset], "task": task, "steps": steps, "n_workers": 0, "batch_size": batch_size}
    if datatype != "audio":
        group["video_sample_num"] = VIDEO_SAMPLE_NUM if datatype == "video" else 1
    if datatype == "audio" or with_audio:
        group["audio_sample_num"] = 1
    return {**group, "data_format": "frame"}


def _opts(files: Sequence[tuple[str, str, str]], counts: dict[str, int]) -> dict:
    """A data-opts JSON (§4.1); ``video_resolution`` is the native size of the synthetic media."""
    return {
        "video_resolution": IMAGE_SIZE,
        "video_encoder_type": "clip_vit_large_14_336px",
        "audio_encoder_type": "beat",
        "gradient_accumulation_steps": 1,
        "dataset_mix_type": "random",
        "audio_melbins": 64,
        "audio_target_length": 1024,
        "data_cfg": {"train": [_loader_group(key, task, kind, counts[key]) for key, task, kind in files], "val": []},
    }


def _attributes(train: _Split, evaluation: _Split) -> dict[str, dict[str, dict]]:
    """Ground truth per media kind and id, with its split; background audio is listed under its video's id."""
    table: dict[str, dict[str, dict]] = {"image": {}, "video": {}, "audio": {}}
    for split_name, split in (("train", train), ("eval", evaluation)):
        kinds = (("image", split.images), ("video", split.videos), ("audio", split.audios + split.backgrounds))
        for kind, items in kinds:
            for item in items:
                fields = {key: value for key, value in asdict(item).items() if key != "id"}
                table[kind][item.id] = {"split": split_name, **fields}
    return table


# ----------------------------------------------------------------------------------------------- generation


def _write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")


def _write_text(root: Path, annotations: dict[str, list[dict]], attributes: dict) -> dict[str, str]:
    """Write every JSON except the manifest; returns the manifest's ``files`` map."""
    files = {"images": IMAGES_DIR, "frames": FRAMES_DIR, "audios": AUDIOS_DIR}
    for key, rows in annotations.items():
        files[key] = f"{ANNOTATIONS_DIR}/{key}.json"
        _write_json(root / files[key], rows)
    counts = {key: len(rows) for key, rows in annotations.items()}
    files["attributes"] = ATTRIBUTES_NAME
    _write_json(root / ATTRIBUTES_NAME, attributes)
    files["task_prompt"] = TASK_PROMPT_NAME
    _write_json(root / TASK_PROMPT_NAME, TASK_PROMPTS)
    for name, stage_files in zip(OPTS_NAMES, (STAGE1_FILES, STAGE2_FILES), strict=True):
        files[name] = OPTS_NAMES[name]
        _write_json(root / files[name], _opts(stage_files, counts))
    return files


def _media_counts(train: _Split, evaluation: _Split) -> dict[str, int]:
    counts = {}
    for prefix, split in (("", train), ("eval_", evaluation)):
        counts[f"{prefix}images"] = len(split.images)
        counts[f"{prefix}videos"] = len(split.videos)
        counts[f"{prefix}audios"] = len(split.audios)
        counts[f"{prefix}background_audios"] = len(split.backgrounds)
    return counts


def _clear(root: Path) -> None:
    """Delete the manifest first (so a crash from here on leaves an incomplete world), then our outputs only."""
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for name in (*OWNED_NAMES, MANIFEST_TMP_NAME):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _generate(root: Path, seed: int, sizes: WorldSizes) -> WorldManifest:
    start = time.perf_counter()
    _clear(root)
    rngs = dict(zip(RNG_STREAMS, np.random.default_rng(seed).spawn(len(RNG_STREAMS)), strict=True))
    train_counts = (sizes.images, sizes.videos, sizes.videos_with_audio, sizes.audios)
    train = _sample_split(rngs["train"], train_counts, "", held_out=False)
    eval_counts = (sizes.eval_images, sizes.eval_videos, sizes.eval_videos, sizes.eval_audios)
    evaluation = _sample_split(rngs["eval"], eval_counts, "ev_", held_out=True)
    _write_media(root, train, rngs["train_media"])
    _write_media(root, evaluation, rngs["eval_media"])
    annotations = {
        **_stage1_annotations(rngs["stage1"], train),
        **_stage2_annotations(rngs["stage2"], train),
        **_eval_annotations(rngs["eval_text"], evaluation, sizes.eval_questions_per_item),
    }
    files = _write_text(root, annotations, _attributes(train, evaluation))
    counts = {**_media_counts(train, evaluation), **{key: len(rows) for key, rows in annotations.items()}}
    manifest = WorldManifest(root, seed, sizes, FORMAT_VERSION, files, counts)
    _write_json(root / MANIFEST_TMP_NAME, manifest.to_json())
    os.replace(
        root / MANIFEST_TMP_NAME, root / MANIFEST_NAME
    )  # last write, atomic: the manifest marks a complete world
    logger.info("synthetic world (seed %d) written to %s in %.1f s", seed, root, time.perf_counter() - start)
    return manifest


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Serialise generation of one root across processes (e.g. every rank of a launch calling ensure_world)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _stale_reason(root: Path, seed: int, sizes: WorldSizes) -> str:
    """Why the world under ``root`` cannot be reused; empty if it can."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return "no manifest (never generated, or generation was interrupted)"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    wanted = {"format_version": FORMAT_VERSION, "seed": seed, "sizes": asdict(sizes)}
    found = {key: data.get(key) for key in wanted} if isinstance(data, dict) else data
    return "" if found == wanted else f"manifest has {found}, wanted {wanted}"


def generate_world(root: Path, seed: int = 0, sizes: WorldSizes = WorldSizes()) -> WorldManifest:
    """(Re)generate the world under ``root`` from scratch; other files in ``root`` are left alone.

    Previous outputs are deleted first, so a world is never a mix of two seeds, and ``MANIFEST.json`` is written
    last, so an interrupted run leaves no manifest and ``ensure_world`` redoes it.
    """
    root = Path(root)
    with _exclusive(root):
        return _generate(root, seed, sizes)


def ensure_world(root: Path, seed: int = 0, sizes: WorldSizes = WorldSizes()) -> WorldManifest:
    """Return the world under ``root``, generating it unless a complete one with this seed, sizes and format exists.

    The check reads only the manifest; a complete world whose files were later edited by hand is not detected.
    """
    root = Path(root)
    with _exclusive(root):
        reason = _stale_reason(root, seed, sizes)
        if not reason:
            return load_manifest(root)
        logger.info("generating synthetic world in %s: %s", root, reason)
        return _generate(root, seed, sizes)


# ----------------------------------------------------------------------------------------------- language corpus


def world_texts(root: Path) -> list[str]:
    """Every training text of the world under ``root``, as training renders it but with no ``<query>``.

    Why: a tiny frozen LLM must already speak the world's language before a bridge can be trained into it, and
    this is what it learns from (``chatbridge.synthetic.tiny_llm``). Stage-1 captions (every caption of a list) go
    through ``render_caption``; stage-2 captions and QA pairs (every choice of a list) become single turns with
    an instruction drawn from ``task_prompt.json`` as training draws it, but from a generator seeded by the file's
    key, so the texts are the same on every call; conversations render whole. The ``<query>`` placeholders are
    dropped because the LM never sees media. The held-out ``eval/`` files are never read. Order: files as in
    ``STAGE1_FILES`` then ``STAGE2_FILES``, rows in file order.
    """
    manifest = load_manifest(Path(root))
    templates = load_instruction_templates(manifest.path("task_prompt"))
    texts = []
    for key, _, _ in STAGE1_FILES:
        for row in json.loads(manifest.path(key).read_text()):
            texts += [render_caption(caption) for caption in row_captions(row)]
    for key, code, datatype in STAGE2_FILES:
        modalities, task, _ = parse_task(code, datatype, key)
        rng = random.Random(key)  # a str seed is hashed with sha512: the same draws in every process
        for row in json.loads(manifest.path(key).read_text()):
            fields = parse_task_fields(row, task)
            if task == "conv":
                texts.append(render_conversation(tuple(modalities), fields["conversation"]))
                continue
            questions = fields.get("questions") or [None] * len(fields["outputs"])
            for question, output in zip(questions, fields["outputs"], strict=True):
                instruction = sample_instruction(templates, prompt_key(modalities, task), rng, question)
                texts.append(render_single_turn(tuple(modalities), instruction, output))
    return [text.replace(QUERY_PLACEHOLDER, "") for text in texts]
