"""Tiny EVA and BEATs towers that can see the synthetic world, written in the official checkpoint formats.

Why: the tiny preset's frozen towers were random, and a random tower leaves shape, position and motion at chance,
so no bridge could learn to answer about them. ``ensure_tiny_encoders`` pretrains the preset's tiny towers on the
world's TRAINING media (``encoder_pretraining``; labels in ``encoder_corpus``) and writes them where the config's
``model.encoders.vision.checkpoint`` and ``model.encoders.audio.checkpoint`` point, as the LAVIS ``eva_vit_g.pth``
(a raw timm/LAVIS state dict) and the official BEATs ``{"cfg", "model"}`` file (old weight-norm names), so the
package's real loaders read them strictly, like the released weights.

Each file has a record beside it (``<file>.json``): the settings it was made from (architecture, preprocessing,
training schedule, a sha256 of the world files it learned from, ``FORMAT_VERSION``), the sha256 of the file, and
the probe's accuracy on the held-out media. A file is regenerated when its record differs from the request or its
bytes from the record; a file without a record was not made here and is never replaced. Training runs on one thread
from fixed seeds, so the same settings give the same bytes on any machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from chatbridge.config import ProcessorConfig, TinyEncodersConfig, TrainConfig
from chatbridge.data.processors.audio import build_beats_fbank
from chatbridge.data.processors.image import build_clip_image
from chatbridge.data.processors.video import select_frame_indices
from chatbridge.models.encoders.beats import BeatsConfig, build_beats, new_to_old_weight_norm_keys
from chatbridge.models.encoders.eva import EvaViTConfig, build_eva_vit_g
from chatbridge.synthetic.encoder_corpus import audio_corpus, vision_corpus
from chatbridge.synthetic.encoder_pretraining import (
    AudioProbe,
    Objective,
    Schedule,
    VisionProbe,
    audio_objective,
    audio_probe_accuracy,
    train_tower,
    vision_objective,
    vision_probe_accuracy,
)
from chatbridge.synthetic.layout import ATTRIBUTES_NAME, MANIFEST_NAME, file_lock, sibling_lock
from chatbridge.synthetic.media import AUDIOS_DIR, FRAMES_DIR, IMAGES_DIR, NUM_FRAMES

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when pretraining changes in a way the recorded settings do not capture, so old files are regenerated."""
RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class _Tower:
    """One tower to ensure: where it goes, what it is made from, and how to make its file's bytes."""

    key: str
    path: Path
    settings: dict[str, Any]
    make: Callable[[], tuple[bytes, dict]]


def ensure_tiny_encoders(config: TrainConfig, tiny: TinyEncodersConfig | None = None) -> None:
    """Write the pretrained tiny EVA and BEATs to the config's encoder checkpoints unless identical ones are there.

    ``tiny`` defaults to ``config.synthetic.tiny_encoders``. The world (``config.synthetic.world``) must exist
    (``chatbridge.synthetic.prepare`` generates it first). Processes (e.g. every rank of a launch) are serialised
    by a lock file beside each checkpoint; the first writes, the rest reuse.

    Raises:
        ValueError: the encoders are not ``vision: eva_vit_g`` and ``audio: beats`` with checkpoint paths, or a
            checkpoint path holds a file this function did not write.
        FileNotFoundError: there is no complete synthetic world.
    """
    tiny = tiny if tiny is not None else config.synthetic.tiny_encoders
    world = _world(config)
    for tower in (_vision_tower(config, tiny, world), _audio_tower(config, tiny, world)):
        _ensure(tower)


def _world(config: TrainConfig) -> Path:
    world = config.synthetic.world
    if world is None or not (Path(world) / MANIFEST_NAME).is_file():
        raise FileNotFoundError(
            f"synthetic.world = {world!r} is not a complete synthetic world; the tiny encoders learn from it "
            "(chatbridge.synthetic.prepare generates it first)"
        )
    return Path(world)


def _encoder(config: TrainConfig, key: str, kind: type) -> Any:
    encoder = config.model.encoders.get(key)
    if not isinstance(encoder, kind) or not encoder.checkpoint:
        raise ValueError(
            f"tiny encoders need model.encoders.{key} to be a {kind.__name__} with a checkpoint path to write, got "
            f"{type(encoder).__name__} with checkpoint {getattr(encoder, 'checkpoint', None)!r}"
        )
    return encoder


# ----------------------------------------------------------------------------------------------- the two towers


def _vision_tower(config: TrainConfig, tiny: TinyEncodersConfig, world: Path) -> _Tower:
    encoder = _encoder(config, "vision", EvaViTConfig)
    processor = config.processor
    schedule = Schedule(tiny.vision_steps, tiny.vision_batch_size, tiny.learning_rate)
    settings = {
        "encoder": _architecture(encoder),
        "processor": {key: getattr(processor, key) for key in ("image_size", "mean", "std", "antialias")},
        **_common_settings(schedule, tiny.seed, _corpus_sha256(world, ("image", "video"))),
    }

    def make() -> tuple[bytes, dict]:
        images = build_clip_image(_without_augmentation(processor))
        train, held_out = (vision_corpus(world, split, images, encoder.patch_size) for split in ("train", "eval"))
        tower, probe = _seeded(tiny.seed, partial(build_eva_vit_g, encoder), partial(VisionProbe, encoder.width))
        _train("tiny EVA", tower, probe, vision_objective(train), schedule, tiny.seed)
        frames = select_frame_indices(NUM_FRAMES, processor.num_frames, "segment_middle")
        accuracy = vision_probe_accuracy(tower, probe, held_out, frames)
        return _torch_bytes(_tensors(tower.backbone.state_dict())), accuracy

    return _Tower("vision", Path(encoder.checkpoint), settings, make)


def _audio_tower(config: TrainConfig, tiny: TinyEncodersConfig, world: Path) -> _Tower:
    encoder = _encoder(config, "audio", BeatsConfig)
    processor = config.processor
    schedule = Schedule(tiny.audio_steps, tiny.audio_batch_size, tiny.learning_rate)
    audio_keys = ("sample_rate", "num_mel_bins", "target_length", "num_audio_segments", "fbank_mean", "fbank_std")
    settings = {
        "encoder": _architecture(encoder),
        "processor": {key: getattr(processor, key) for key in (*audio_keys, "extra_segment_on_exact_multiple")},
        **_common_settings(schedule, tiny.seed, _corpus_sha256(world, ("audio",))),
    }

    def make() -> tuple[bytes, dict]:
        fbank = build_beats_fbank(processor)
        train, held_out = (audio_corpus(world, split, fbank) for split in ("train", "eval"))
        steps = processor.target_length // encoder.patch_size
        tower, probe = _seeded(tiny.seed, partial(build_beats, encoder), partial(AudioProbe, encoder.width, steps))
        _train("tiny BEATs", tower, probe, audio_objective(train, encoder.patch_size), schedule, tiny.seed)
        model = new_to_old_weight_norm_keys(_tensors(tower.backbone.state_dict()))
        accuracy = audio_probe_accuracy(tower, probe, held_out)
        return _torch_bytes({"cfg": official_beats_cfg(encoder), "model": model}), accuracy

    return _Tower("audio", Path(encoder.checkpoint), settings, make)


def official_beats_cfg(encoder: BeatsConfig) -> dict[str, Any]:
    """The `cfg` of an official BEATs checkpoint (the released key set) describing ``encoder`` as trained here."""
    return {
        "encoder_layers": encoder.depth,
        "encoder_embed_dim": encoder.width,
        "encoder_ffn_embed_dim": encoder.ffn_dim,
        "encoder_attention_heads": encoder.num_heads,
        "activation_fn": "gelu",
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "dropout_input": 0.0,
        "layer_norm_first": encoder.layer_norm_first,
        "conv_bias": False,
        "conv_pos": encoder.conv_pos,
        "conv_pos_groups": encoder.conv_pos_groups,
        "relative_position_embedding": True,
        "num_buckets": encoder.num_buckets,
        "max_distance": encoder.max_distance,
        "gru_rel_pos": encoder.gru_rel_pos,
        "deep_norm": encoder.deep_norm,
        "input_patch_size": encoder.patch_size,
        "layer_wise_gradient_decay_ratio": 1.0,
        "embed_dim": encoder.embed_dim,
        "finetuned_model": False,
    }


# ----------------------------------------------------------------------------------------------- training


def _seeded(seed: int, *builders: Callable[[], torch.nn.Module]) -> list[torch.nn.Module]:
    """Build modules from a fixed seed without touching the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [build() for build in builders]


def _train(
    name: str, tower: torch.nn.Module, probe: torch.nn.Module, objective: Objective, schedule: Schedule, seed: int
) -> None:
    """`train_tower` on one thread with a progress bar: the float reductions, and so the bytes, must not depend
    on the machine's core count (as for the tiny LLaMA); the caller's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with tqdm(total=schedule.steps, desc=f"pretraining {name}", unit="step") as bar:
            train_tower(tower, probe, objective, schedule, torch.Generator().manual_seed(seed), bar.update)
    finally:
        torch.set_num_threads(threads)
    logger.info("%s pretrained for %d steps in %.0f s", name, schedule.steps, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- settings and files


def _architecture(encoder: EvaViTConfig | BeatsConfig) -> dict[str, Any]:
    """The encoder section's fields that shape the weights (not where they are stored or how they are run)."""
    return {key: value for key, value in asdict(encoder).items() if key not in ("checkpoint", "frozen", "precision")}


def _common_settings(schedule: Schedule, seed: int, corpus_sha256: str) -> dict[str, Any]:
    return {
        "training": {**asdict(schedule), "seed": seed},
        "corpus_sha256": corpus_sha256,
        "format_version": FORMAT_VERSION,
    }


def _corpus_sha256(world: Path, kinds: tuple[str, ...]) -> str:
    """sha256 of the attributes and media files of every TRAINING item of ``kinds`` (what a tower learns from), so
    that evaluation items added to a world leave the towers valid."""
    digest = hashlib.sha256()
    table = json.loads((world / ATTRIBUTES_NAME).read_text())
    for kind in kinds:
        for media_id, entry in table[kind].items():
            if entry["split"] != "train":
                continue
            digest.update(json.dumps([kind, media_id, entry], sort_keys=True).encode())
            for path in _media_files(world, kind, media_id):
                digest.update(path.relative_to(world).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _media_files(world: Path, kind: str, media_id: str) -> list[Path]:
    if kind == "image":
        return [world / IMAGES_DIR / media_id]
    if kind == "video":
        return sorted((world / FRAMES_DIR / media_id).iterdir())
    return [world / AUDIOS_DIR / f"{media_id}.wav"]


def _without_augmentation(processor: ProcessorConfig) -> ProcessorConfig:
    """The run's image settings; pretraining inputs are the evaluation-mode tensors, so augmentation is off."""
    return ProcessorConfig(**{**asdict(processor), "augment": False})


def _tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous copies (no views into shared storage: each tensor is saved on its own)."""
    return {key: value.detach().clone().contiguous() for key, value in state_dict.items()}


def _torch_bytes(content: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def _up_to_date(path: Path, settings: dict[str, Any]) -> bool:
    """Whether ``path`` holds the file these settings make. Raises ValueError for a file not written here."""
    record_path = _record_path(path)
    if not record_path.is_file():
        if path.exists():
            raise ValueError(
                f"{path} exists but has no {record_path.name}, so it was not written by tiny_encoders (it may be a "
                "real checkpoint); it is never replaced automatically: delete it or point the config elsewhere"
            )
        return False
    record = json.loads(record_path.read_text())
    matches = record.get("settings") == settings and path.is_file()
    return matches and hashlib.sha256(path.read_bytes()).hexdigest() == record.get("sha256")


def _ensure(tower: _Tower) -> None:
    """Make ``tower``'s file unless it is up to date. The record goes first: after a crash between the two writes,
    the old file no longer matches the new record's sha256, so the next call makes it again."""
    with file_lock(sibling_lock(tower.path)):
        if _up_to_date(tower.path, tower.settings):
            return
        logger.info("pretraining the tiny %s encoder for %s", tower.key, tower.path)
        payload, accuracy = tower.make()
        logger.info("tiny %s encoder, probe accuracy on held-out media: %s", tower.key, accuracy)
        record = {"settings": tower.settings, "sha256": hashlib.sha256(payload).hexdigest(), "probe": accuracy}
        _atomic_write(_record_path(tower.path), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        _atomic_write(tower.path, payload)


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling and rename it into place, so readers never see a partial file."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the checkpoint is an ordinary shared file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
