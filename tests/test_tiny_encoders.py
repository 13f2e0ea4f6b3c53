"""Tiny towers pretrained on the synthetic world (`chatbridge.synthetic.tiny_encoders`): official formats loaded by
the package's real loaders, reuse and regeneration, determinism, and probes above chance (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from chatbridge.config import TinyEncodersConfig, TrainConfig
from chatbridge.config_loading import load_config
from chatbridge.models.encoders.beats import build_beats, old_to_new_weight_norm_keys
from chatbridge.models.encoders.eva import build_eva_vit_g
from chatbridge.synthetic import tiny_encoders
from chatbridge.synthetic.tiny_encoders import ensure_tiny_encoders
from chatbridge.synthetic.world import SCALES, ensure_world
from tests.fixtures.beats import TINY_BEATS_CFG

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml"
FAST = TinyEncodersConfig(vision_steps=2, vision_batch_size=4, audio_steps=2, audio_batch_size=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SCALES["tiny"]).root


def config(world: Path, folder: Path, *options: str) -> TrainConfig:
    """The tiny preset with its encoder checkpoints in `folder`."""
    paths = [
        f"synthetic.world={world}",
        f"model.llm.path={folder / 'llm'}",
        f"model.encoders.vision.checkpoint={folder / 'eva_vit_g.pth'}",
        f"model.encoders.audio.checkpoint={folder / 'beats.pt'}",
    ]
    return load_config(TINY_PRETRAIN, [*paths, *options], require_paths=False)


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file but the lock files: changes if and only if the file was written again."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".lock")]
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def written(world: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    cfg = config(world, tmp_path_factory.mktemp("encoders"))
    ensure_tiny_encoders(cfg, FAST)
    return cfg


def test_eva_file_loads_strictly_through_the_real_loader(written: TrainConfig) -> None:
    encoder_cfg = written.model.encoders["vision"]
    state_dict = torch.load(encoder_cfg.checkpoint, map_location="cpu", weights_only=True)
    encoder = build_eva_vit_g(encoder_cfg)
    assert set(state_dict) == set(encoder.backbone.state_dict())  # a raw LAVIS/timm state dict, nothing else
    encoder.load_checkpoint(encoder_cfg.checkpoint)  # raises on any missing or unexpected key
    loaded = encoder.backbone.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state_dict.items())


def test_beats_file_is_official_and_loads_strictly_through_the_real_loader(written: TrainConfig) -> None:
    encoder_cfg = written.model.encoders["audio"]
    checkpoint = torch.load(encoder_cfg.checkpoint, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"cfg", "model"} and set(checkpoint["cfg"]) == set(TINY_BEATS_CFG)
    assert any(key.endswith(".weight_g") for key in checkpoint["model"])  # the old weight-norm names, as released
    encoder = build_beats(encoder_cfg)
    model = old_to_new_weight_norm_keys(checkpoint["model"])
    assert set(model) == set(encoder.backbone.state_dict())
    encoder.load_checkpoint(encoder_cfg.checkpoint)  # checks the cfg against the built network, keys strictly
    loaded = encoder.backbone.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.items())


def test_records_hold_settings_file_hash_and_probe(written: TrainConfig) -> None:
    for key in ("vision", "audio"):
        path = Path(written.model.encoders[key].checkpoint)
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert set(record) == {"settings", "sha256", "probe"} and record["settings"]["corpus_sha256"]
        assert record["settings"]["training"]["steps"] == 2 and "chance" in record["probe"]


def test_ensure_reuses_identical_files_and_regenerates_changed_ones(world: Path, tmp_path: Path) -> None:
    cfg = config(world, tmp_path)
    ensure_tiny_encoders(cfg, FAST)
    stamps = _stamps(tmp_path)
    ensure_tiny_encoders(config(world, tmp_path), FAST)
    assert _stamps(tmp_path) == stamps  # same settings: nothing rewritten
    ensure_tiny_encoders(cfg, dataclasses.replace(FAST, vision_steps=3))
    changed = {name for name, stamp in _stamps(tmp_path).items() if stamps.get(name) != stamp}
    assert changed == {"eva_vit_g.pth", "eva_vit_g.pth.json"}
    stamps = _stamps(tmp_path)
    ensure_tiny_encoders(
        config(world, tmp_path, "processor.target_length=64"), dataclasses.replace(FAST, vision_steps=3)
    )
    changed = {name for name, stamp in _stamps(tmp_path).items() if stamps.get(name) != stamp}
    assert changed == {"beats.pt", "beats.pt.json"}  # the audio preprocessing changed, the vision side did not


def test_same_settings_give_the_same_bytes(world: Path, written: TrainConfig, tmp_path: Path) -> None:
    torch.rand(3)  # another state of the global random stream changes nothing
    ensure_tiny_encoders(config(world, tmp_path), FAST)
    for key in ("vision", "audio"):
        first = Path(written.model.encoders[key].checkpoint)
        again = Path(config(world, tmp_path).model.encoders[key].checkpoint)
        assert again.read_bytes() == first.read_bytes()
        assert again.with_name(again.name + ".json").read_bytes() == first.with_name(first.name + ".json").read_bytes()


def test_a_file_not_written_here_is_never_replaced(world: Path, tmp_path: Path) -> None:
    (tmp_path / "eva_vit_g.pth").write_bytes(b"a real checkpoint")
    with pytest.raises(ValueError, match="was not written by tiny_encoders"):
        ensure_tiny_encoders(config(world, tmp_path), FAST)
    assert (tmp_path / "eva_vit_g.pth").read_bytes() == b"a real checkpoint"


def test_a_crash_after_the_record_is_redone(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(world, tmp_path)
    ensure_tiny_encoders(cfg, FAST)
    good = (tmp_path / "eva_vit_g.pth").read_bytes()
    writes = []
    real_write = tiny_encoders._atomic_write

    def crash_on_the_checkpoint(path: Path, payload: bytes) -> None:
        writes.append(path.name)
        if path.suffix == ".pth":
            raise RuntimeError("killed between the record and the file")
        real_write(path, payload)

    monkeypatch.setattr(tiny_encoders, "_atomic_write", crash_on_the_checkpoint)
    with pytest.raises(RuntimeError, match="killed"):
        ensure_tiny_encoders(cfg, dataclasses.replace(FAST, vision_steps=3))
    assert writes == ["eva_vit_g.pth.json", "eva_vit_g.pth"] and (tmp_path / "eva_vit_g.pth").read_bytes() == good
    monkeypatch.undo()
    ensure_tiny_encoders(cfg, dataclasses.replace(FAST, vision_steps=3))  # the stale file no longer matches
    assert (tmp_path / "eva_vit_g.pth").read_bytes() != good
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no leftovers


def test_missing_world_or_checkpoint_path_is_refused(world: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a complete synthetic world"):
        ensure_tiny_encoders(config(tmp_path / "nowhere", tmp_path), FAST)
    cfg = config(world, tmp_path)
    cfg.model.encoders["audio"].checkpoint = None
    with pytest.raises(ValueError, match=r"model\.encoders\.audio .* checkpoint path"):
        ensure_tiny_encoders(cfg, FAST)


RECOMMENDED = [
    "model.encoders.vision.image_size=64",
    "model.encoders.vision.width=128",
    "model.encoders.audio.embed_dim=64",
    "model.encoders.audio.width=64",
    "model.encoders.audio.ffn_dim=128",
    "processor.target_length=160",
    "processor.num_audio_segments=2",
]
"""The tiny dims proposed for the preset (issue 15): 64-pixel frames, a 128-wide EVA, and two 1.6 s fbank segments,
which hold every clip of the world (at most 3 s) whole, so a clip's beeps are those of its two segments."""


@pytest.mark.slow
def test_recommended_towers_see_what_the_questions_ask(tmp_path: Path) -> None:
    """The default world and settings (~3 min on 2 cores): the probes read every asked attribute off held-out media."""
    world = ensure_world(tmp_path / "world", seed=0).root
    ensure_tiny_encoders(config(world, tmp_path, *RECOMMENDED), TinyEncodersConfig())
    vision = json.loads((tmp_path / "eva_vit_g.pth.json").read_text())["probe"]
    audio = json.loads((tmp_path / "beats.pt.json").read_text())["probe"]
    assert vision["image"]["colour"] > 0.98 and vision["image"]["shape"] > 0.9 and vision["image"]["position"] > 0.9
    assert vision["video"]["colour"] > 0.98 and vision["video"]["shape"] > 0.9 and vision["video"]["direction"] > 0.9
    assert audio["pitch"] > 0.98 and audio["timbre"] > 0.9 and audio["clip_count"] > 0.9
    assert audio["segment_count_per_token"] > 0.95
