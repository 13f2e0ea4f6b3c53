"""A deterministic synthetic multimodal world, written in the reference annotation formats.

Why it exists: every CPU test, tiny training run, evaluation and demo needs images, videos and audio with captions,
questions and conversations, and none of the real datasets fit on a laptop. This package draws a small world of
coloured shapes and beeps whose every caption and answer follows from known attributes, so a model that learns
anything shows it, and writes it in exactly the formats the real loaders read (docs/reference/chatbridge.md §4.1-4.4),
so the same loaders run on it unchanged. This module generates a world and is its public API; the parts live in
``items`` (attributes and sampling), ``media`` (rendering), ``annotations`` (training rows), ``questions``
(held-out rows) and ``formats`` (file formats and the LM corpus).

Layout under ``root`` (every path inside annotation files and data-opts JSONs is relative; the data-opts JSONs sit
at the root, and their relative paths are resolved against the folder that holds the JSON, i.e. the world root)::

    images/<image_id>                       64x64 PNG; image ids keep the ".png" suffix because the reference
                                            resolver tries ``dir/id`` first
    frames/<video_id>/img_0001.jpg ...      8 JPEG frames per video (``data_format: "frame"``)
    audios/<audio_id>.wav                   16 kHz mono PCM-16 beeps; a video's background audio is
                                            ``audios/<video_id>.wav``
    annotations/stage1/{image,video,audio}.json   VALOR ``pretrain_txt_mapper.json`` format (§4.3)
    annotations/stage2/<name>.json                MULTIS format, one file per task (§4.4, ``STAGE2_FILES``)
    annotations/test/<name>.json                  test split: new media of training combinations (``questions``)
    annotations/eval/<name>.json                  held-out split: new combinations (``questions``); no data-opts
                                                  JSON refers to either split
    annotations/lm/joint_qa.json                  joint questions about training items, text only, for the stand-in
                                                  LM's corpus (``world_texts``); no data-opts JSON refers to it
    annotations/attributes.json                   ground-truth attributes, split and rendered geometry of every item
    task_prompt.json                              task name -> instruction templates (docs/reference/chatbridge.md §4.2)
    opts_stage1.json, opts_stage2.json            VALOR-style data-opts (docs/reference/chatbridge.md §4.1)
    MANIFEST.json                                 written last: its presence marks a complete world

Two evaluation splits, of the same sizes, with their own media ids: the test split (prefix ``ts_``) draws new
media from the attribute combinations training has, the usual test of what was learnt; the held-out split (prefix
``ev_``) draws them only from combinations that no training item has (``items.HELD_OUT_*``), a test of composition.
Every evaluation video has background audio. Both splits' files, question types and chance levels are described
in ``questions``; the manifest declares them. No training file of the default world pairs two media: joint answers
in either split must come from separate alignment.

Determinism: all randomness comes from ``numpy.random.default_rng(seed)`` (split into the ``RNG_STREAMS``, so e.g.
resizing the training split leaves the held-out split unchanged), files are written in a fixed order with no
timestamps, and two generations with the same seed and sizes are byte-identical. No ``.mp4`` is written even when
PyAV is installed, so the bytes never depend on optional packages or encoder versions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from chatbridge.synthetic.annotations import stage1_annotations, stage2_annotations
from chatbridge.synthetic.formats import (
    LM_JOINT_KEY,
    STAGE1_FILES,
    STAGE2_FILES,
    TASK_PROMPTS,
    attributes_table,
    world_texts,
    write_json,
    write_text,
)
from chatbridge.synthetic.items import HELD_OUT_AUDIO, HELD_OUT_IMAGE, HELD_OUT_VIDEO, Split, sample_split
from chatbridge.synthetic.layout import (
    DEFAULT_SIZES,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    MANIFEST_TMP_NAME,
    OWNED_NAMES,
    SCALES,
    WorldManifest,
    WorldSizes,
    file_lock,
    load_manifest,
)
from chatbridge.synthetic.media import IMAGE_SIZE, NUM_FRAMES, SAMPLE_RATE, Geometry, write_media
from chatbridge.synthetic.questions import attribute_values, eval_annotations, lm_joint_rows, question_types

__all__ = [
    "FORMAT_VERSION",
    "HELD_OUT_AUDIO",
    "HELD_OUT_IMAGE",
    "HELD_OUT_VIDEO",
    "IMAGE_SIZE",
    "MANIFEST_NAME",
    "NUM_FRAMES",
    "OWNED_NAMES",
    "RNG_STREAMS",
    "SAMPLE_RATE",
    "SCALES",
    "STAGE1_FILES",
    "STAGE2_FILES",
    "TASK_PROMPTS",
    "WorldManifest",
    "WorldSizes",
    "ensure_world",
    "generate_world",
    "load_manifest",
    "world_texts",
]

logger = logging.getLogger(__name__)

# One random stream per part, so e.g. changing the training sizes leaves the held-out split unchanged.
# Appending a stream leaves the earlier ones unchanged (numpy spawns children by index).
RNG_STREAMS = (
    *("train", "eval", "train_media", "eval_media", "stage1", "stage2", "eval_text", "lm_text"),
    *("test", "test_media", "test_text"),
)


def _media_counts(splits: dict[str, Split]) -> dict[str, int]:
    counts = {}
    for name, split in splits.items():
        prefix = "" if name == "train" else f"{name}_"
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
    train = sample_split(rngs["train"], train_counts, "", held_out=False)
    eval_counts = (sizes.eval_images, sizes.eval_videos, sizes.eval_videos, sizes.eval_audios)
    evaluation = sample_split(rngs["eval"], eval_counts, "ev_", held_out=True)
    test = sample_split(rngs["test"], eval_counts, "ts_", held_out=False)
    splits = {"train": train, "eval": evaluation, "test": test}
    geometry = _merge(*(write_media(root, split, rngs[f"{name}_media"]) for name, split in splits.items()))
    annotations = {
        **stage1_annotations(rngs["stage1"], train),
        **stage2_annotations(rngs["stage2"], train),
        **eval_annotations(rngs["eval_text"], evaluation, sizes.eval_questions_per_item, "eval"),
        **eval_annotations(rngs["test_text"], test, sizes.eval_questions_per_item, "test"),
        LM_JOINT_KEY: lm_joint_rows(rngs["lm_text"], train),
    }
    files = write_text(root, annotations, attributes_table(splits, geometry))
    counts = {**_media_counts(splits), **{key: len(rows) for key, rows in annotations.items()}}
    types = question_types(annotations)
    manifest = WorldManifest(root, seed, sizes, FORMAT_VERSION, files, counts, types, attribute_values())
    write_json(root / MANIFEST_TMP_NAME, manifest.to_json())
    # The last write, and atomic: the manifest marks a complete world.
    os.replace(root / MANIFEST_TMP_NAME, root / MANIFEST_NAME)
    logger.info("synthetic world (seed %d) written to %s in %.1f s", seed, root, time.perf_counter() - start)
    return manifest


def _merge(*tables: dict[str, dict[str, Geometry]]) -> dict[str, dict[str, Geometry]]:
    """Per-kind union of the geometry tables of the splits (their ids are disjoint)."""
    return {kind: {key: value for table in tables for key, value in table[kind].items()} for kind in tables[0]}


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


def generate_world(root: Path, seed: int = 0, sizes: WorldSizes = DEFAULT_SIZES) -> WorldManifest:
    """(Re)generate the world under ``root`` from scratch; other files in ``root`` are left alone.

    Previous outputs are deleted first, so a world is never a mix of two seeds, and ``MANIFEST.json`` is written
    last, so an interrupted run leaves no manifest and ``ensure_world`` redoes it.
    """
    root = Path(root)
    with file_lock(root / LOCK_NAME):
        return _generate(root, seed, sizes)


def ensure_world(root: Path, seed: int = 0, sizes: WorldSizes = DEFAULT_SIZES) -> WorldManifest:
    """Return the world under ``root``, generating it unless a complete one with this seed, sizes and format exists.

    The check reads only the manifest; a complete world whose files were later edited by hand is not detected.
    """
    root = Path(root)
    with file_lock(root / LOCK_NAME):
        reason = _stale_reason(root, seed, sizes)
        if not reason:
            return load_manifest(root)
        logger.info("generating synthetic world in %s: %s", root, reason)
        return _generate(root, seed, sizes)
