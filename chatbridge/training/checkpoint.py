"""Training checkpoints: written atomically, the last K kept, resumed at the exact step.

A checkpoint is a folder `step_0000100/` holding `model.safetensors` (trainable tensors), `config.yaml` (the resolved
config) and `training_state.pt` (optimizer, step, RNG states, data-mixture position; tensors and plain Python
values only, so it loads with `weights_only=True`). It is written as `step_0000100.tmp/`, every file fsynced, and
renamed into place, so a folder without the `.tmp` suffix is always complete.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chatbridge.config import TrainConfig
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.loading import CONFIG_FILE, WEIGHTS_FILE, read_our_weights, save_chatbridge_checkpoint

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
FINAL_NAME = "final"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step_{step:07d}"


def save_training_checkpoint(folder: Path, model: ChatBridgeModel, config: TrainConfig, state: dict[str, Any]) -> Path:
    """Write model tensors, config and `state` into `folder` atomically (temporary folder, fsync, rename)."""
    temporary = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    save_chatbridge_checkpoint(model, config, temporary)
    torch.save(state | {"rng": capture_rng_state()}, temporary / STATE_FILE)
    for file in temporary.iterdir():
        _fsync(file)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)
    _fsync(folder.parent)
    return folder


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (and any abandoned `.tmp` folder)."""
    folder = output_dir / "checkpoints"
    for stale in folder.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in complete_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    folder = output_dir / "checkpoints"
    return sorted(path for path in folder.glob("step_*") if path.is_dir() and not path.name.endswith(".tmp"))


def find_resume_checkpoint(resume: str | None, output_dir: Path) -> Path | None:
    """`auto`: the newest complete checkpoint in `output_dir` (None if there is none); a path: that folder."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"run.resume: {folder} is not a training checkpoint (no {STATE_FILE})")
    return folder


def load_training_checkpoint(folder: Path, model: ChatBridgeModel) -> dict[str, Any]:
    """Load the trainable tensors into `model` and return the training state; refuses another architecture."""
    tensors = read_our_weights(folder / WEIGHTS_FILE)
    own = {name: p for name, p in model.named_parameters() if p.requires_grad}
    mismatched = sorted(set(tensors) ^ set(own)) + [n for n in tensors if n in own and tensors[n].shape != own[n].shape]
    if mismatched:
        raise ValueError(
            f"{folder} was written by another architecture or trainable set ({len(mismatched)} tensors differ, "
            f"e.g. {mismatched[:3]}); its config is {folder / CONFIG_FILE}"
        )
    model.load_state_dict(tensors, strict=False)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    restore_rng_state(state.pop("rng"))
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in weights_only-loadable form."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """`random.setstate` wants the nested tuples that pickling-free loading may have turned into lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, list | tuple) else value


def publish_final(step_folder: Path, final_folder: Path) -> None:
    """Expose the last checkpoint's model files as `<output_dir>/final` (hard links when possible, else copies)."""
    temporary = final_folder.with_name(final_folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        try:
            os.link(step_folder / name, temporary / name)
        except OSError:
            shutil.copy2(step_folder / name, temporary / name)
    if final_folder.exists():
        shutil.rmtree(final_folder)
    os.replace(temporary, final_folder)
