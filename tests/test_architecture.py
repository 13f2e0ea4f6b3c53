"""The package's layers import one way, and a new encoder is one file plus one registration."""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chatbridge.config import EncoderConfig
from chatbridge.config_loading import load_config
from chatbridge.registry import ENCODERS
from tests.conftest import REPO, TINY_PRETRAIN

PACKAGE = REPO / "chatbridge"
# Lowest first; a module may import its own layer and lower ones only.
LAYERS = {
    "config": 0,
    "config_fields": 0,
    "config_apps": 0,
    "config_loading": 0,
    "registry": 0,
    "errors": 0,
    "data": 1,
    "models": 2,
}
LAYERS |= {"training": 3, "inference": 3, "evaluation": 4, "cli": 5, "ui": 5}
CORE = {"data", "models", "training", "inference", "evaluation"}


def layer_of(module: str) -> str | None:
    """`chatbridge.data.collate` -> `data`; None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "chatbridge" and len(parts) > 1 else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, including `from x import y` as `x.y`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def upward_imports() -> list[str]:
    """Every import from a lower layer into a higher one, and from the core into the synthetic harness.

    `registry.load_builtin_components` imports the registering packages on purpose (inside a function), to fill
    the registries; it is the one exception.
    """
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = layer_of(".".join(path.relative_to(REPO).with_suffix("").parts))
        if here is None or here == "synthetic":
            continue
        for line, module in imported_modules(path):
            there = layer_of(module)
            if there is None or there == here or (here == "registry" and there in CORE):
                continue
            upward = there == "synthetic" or LAYERS.get(there, 0) > LAYERS.get(here, 0)
            if upward:
                problems.append(f"{path.relative_to(REPO)}:{line} ({here}) imports {module} ({there})")
    return problems


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_static_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself must fail on a violation: plant one in a copy of the package and look."""
    copy = tmp_path / "chatbridge" / "data"
    copy.mkdir(parents=True)
    (copy / "bad.py").write_text("from chatbridge.models.chatbridge import ChatBridgeModel\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "chatbridge")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert upward_imports() == [
        "chatbridge/data/bad.py:1 (data) imports chatbridge.models.chatbridge.ChatBridgeModel (models)"
    ]


def test_every_layer_is_known_to_the_check():
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert (folders | modules) - {"configs", "synthetic"} <= set(LAYERS)


# ----------------------------------------------------------------------------------------------- a toy encoder


@dataclass
class ToyEncoderConfig(EncoderConfig):
    """A frozen random patch embedding: the smallest thing that is an encoder."""

    name: str = "toy_patches"
    image_size: int = 32
    patch_size: int = 16
    width: int = 24

    def output_width(self) -> int:
        return self.width

    def num_tokens(self, modality: str, item_shape: tuple[int, ...]) -> int:
        return (item_shape[-2] // self.patch_size) * (item_shape[-1] // self.patch_size)

    def preprocessing(self, modality: str) -> dict[str, Any]:
        key, name = {"image": ("image_processor", "clip_image"), "video": ("video_processor", "video_frames")}[modality]
        return {key: name, "image_size": self.image_size, "mean": [0.5] * 3, "std": [0.25] * 3}


class ToyEncoder(nn.Module):
    def __init__(self, cfg: ToyEncoderConfig) -> None:
        super().__init__()
        self.width = cfg.width
        self.patches = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, items: Tensor, modality: str) -> Tensor:
        return self.patches(items).flatten(2).transpose(1, 2)  # (N, patches, width)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        self.patches.load_state_dict(torch.load(path, weights_only=True))


def build_toy_encoder(cfg: ToyEncoderConfig) -> ToyEncoder:
    return ToyEncoder(cfg)


def test_a_new_encoder_is_one_registration_and_trains_a_step(tiny_llm_dir, tmp_path, monkeypatch):
    """Registered from this file alone (no package change), configured by YAML, trained one step on the world."""
    from chatbridge.synthetic.world import SCALES, ensure_world
    from chatbridge.training.loop import train

    monkeypatch.setitem(ENCODERS._builders, "toy_patches", build_toy_encoder)
    torch.save(ToyEncoder(ToyEncoderConfig()).patches.state_dict(), tmp_path / "toy.pt")
    world = ensure_world(tmp_path / "world", sizes=SCALES["tiny"]).root
    options = [
        f"model.llm.path={tiny_llm_dir}",
        f"synthetic.world={world}",
        "model.encoders.vision.name=toy_patches",
        f"model.encoders.vision.checkpoint={tmp_path / 'toy.pt'}",
        "model.encoders.audio.checkpoint=null",  # a random audio tower: this test is about the vision one
        "run.feature_cache=null",
        f"run.output_dir={tmp_path / 'run'}",
        "run.max_steps=1",
        "run.warmup_steps=0",
        "run.checkpoint_every=0",
    ]
    config = load_config(TINY_PRETRAIN, options, require_paths=False)
    assert isinstance(config.model.encoders["vision"], ToyEncoderConfig)
    assert config.datasets["image_captions"].processor.mean == [0.5] * 3  # the toy encoder's preprocessing
    config.datasets = {"image_captions": dataclasses.replace(config.datasets["image_captions"], batch_size=2)}
    result = train(config)
    audio_width = config.model.encoders["audio"].width
    assert result.model.adapters["audio"].weight.shape == (24, audio_width)  # audio mapped to the toy's (memory) width
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[0]))
    state = torch.load(tmp_path / "toy.pt", weights_only=True)
    assert torch.equal(result.model.encoders["vision"].patches.weight, state["weight"])  # its loader ran
