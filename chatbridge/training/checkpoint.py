"""Training checkpoints: written atomically, verified before use, the last K kept, resumed at the exact step.

A checkpoint is a folder `step_0000100/` holding `model.safetensors` (trainable tensors), `config.yaml` (the resolved
config), `training_state.pt` (optimizer, step, RNG states, data-mixture position; tensors and plain Python values
only, so it loads with `weights_only=True`) and, written last, `manifest.json` with the size and sha256 of every
other file. It is written as `step_0000100.tmp/`, every file fsynced, and renamed into place. A checkpoint is
complete only when its manifest verifies, so a truncated file, a half-copied folder or a foreign `step_*` folder is
never resumed from: `resume: auto` takes the newest complete one and says why it skipped any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from chatbridge.config import TrainConfig
from chatbridge.errors import UserError, load_torch_file
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.loading import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_our_weights,
    trainable_state_dict,
    write_chatbridge_folder,
)

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"
FINAL_NAME = "final"
CHUNK = 1 << 24  # bytes read at a time when hashing


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step_{step:07d}"


def gather_trainable(model: ChatBridgeModel, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict]:
    """(trainable tensors, optimizer state) in full, on CPU, for a checkpoint. Every rank must call it: parameters
    sharded by FSDP (a trained LLM) are gathered, which is a collective."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not any(isinstance(p, DTensor) for p in trainable):
        return trainable_state_dict(model), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    tensors = {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return tensors, get_optimizer_state_dict(model, optimizer, options=options)


def restore_optimizer(model: ChatBridgeModel, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The optimizer state of `gather_trainable`, back into a replicated or FSDP-sharded model's optimizer."""
    if not any(isinstance(p, DTensor) for p in model.parameters() if p.requires_grad):
        optimizer.load_state_dict(state)
        return
    # The saved state is keyed by parameter name; the optimizer's own format by position in its groups. Each
    # rank cuts its shards from the full tensors (see `load_into_shards`: no collective).
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    positional: dict[int, dict[str, Any]] = {}
    groups, position = [], 0
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        positions = []
        for parameter in group["params"]:
            values = state["state"].get(names[id(parameter)])
            if values is not None:
                positional[position] = {key: _shard_like(value, parameter) for key, value in values.items()}
            positions.append(position)
            position += 1
        groups.append({**saved, "params": positions})
    optimizer.load_state_dict({"state": positional, "param_groups": groups})


def _shard_like(value: Any, parameter: torch.Tensor) -> Any:
    """A full tensor shaped like a sharded `parameter` (AdamW's moments), as this rank's shard of it; else as is."""
    if isinstance(parameter, DTensor) and isinstance(value, torch.Tensor) and value.shape == parameter.shape:
        return distribute_tensor(value, parameter.device_mesh, parameter.placements, src_data_rank=None)
    return value


def save_training_checkpoint(folder: Path, tensors: dict[str, Any], config: TrainConfig, state: dict[str, Any]) -> Path:
    """Write model tensors, config, `state` and the manifest into `folder` atomically (temporary folder, fsync,
    rename). A failed write (a full disk) removes the temporary folder, leaves earlier checkpoints as they were and
    raises UserError naming the folder."""
    temporary = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write_chatbridge_folder(tensors, config, temporary)
        torch.save(state | {"rng": capture_rng_state()}, temporary / STATE_FILE)
        write_manifest(temporary)
        for file in temporary.iterdir():
            _fsync(file)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temporary, folder)
        _fsync(folder.parent)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise UserError(f"could not write checkpoint {folder}: {error.strerror or error}") from error
    return folder


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file in `folder` (the manifest itself is written last)."""
    files = {path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in sorted(folder.iterdir())}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1) + "\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def why_incomplete(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (no manifest, a missing, truncated or changed file); None if it is."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST_FILE}"
    for name in (WEIGHTS_FILE, STATE_FILE):
        if name not in files:
            return f"its manifest lists no {name}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, not {expected['bytes']} (truncated?)"
        if sha256_of(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def clean_stale_temporaries(output_dir: Path) -> None:
    """Remove `*.tmp` folders left by a run that died while writing a checkpoint."""
    for stale in (output_dir / "checkpoints").glob("*.tmp"):
        logger.info("removing %s, left by an interrupted checkpoint write", stale)
        shutil.rmtree(stale, ignore_errors=True)


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (and any abandoned `.tmp` folder)."""
    clean_stale_temporaries(output_dir)
    for old in step_folders(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def step_folders(output_dir: Path) -> list[Path]:
    """Step checkpoint folders by name, oldest first (complete or not)."""
    folder = output_dir / "checkpoints"
    return sorted(path for path in folder.glob("step_*") if path.is_dir() and not path.name.endswith(".tmp"))


def find_resume_checkpoint(resume: str | None, output_dir: Path) -> Path | None:
    """`auto`: the newest complete checkpoint in `output_dir` (None, said in the log, if there is none); a path:
    that folder, which must be complete."""
    if resume is None:
        return None
    if resume != "auto":
        folder = Path(resume)
        reason = why_incomplete(folder)
        if reason is not None:
            raise UserError(f"run.resume: {folder} is not a complete training checkpoint: {reason}")
        return folder
    for folder in reversed(step_folders(output_dir)):
        reason = why_incomplete(folder)
        if reason is None:
            return folder
        logger.warning("resume: skipping %s: %s", folder, reason)
    logger.info("resume: no complete checkpoint in %s; starting from step 0", output_dir / "checkpoints")
    return None


def load_training_checkpoint(folder: Path, model: ChatBridgeModel) -> dict[str, Any]:
    """Load the trainable tensors into `model` and return the training state; refuses another architecture."""
    tensors = read_our_weights(folder / WEIGHTS_FILE)
    own = {name: p for name, p in model.named_parameters() if p.requires_grad}
    mismatched = sorted(set(tensors) ^ set(own)) + [n for n in tensors if n in own and tensors[n].shape != own[n].shape]
    if mismatched:
        raise UserError(
            f"{folder} was written by another architecture or trainable set ({len(mismatched)} tensors differ, "
            f"e.g. {mismatched[:3]}); its config is {folder / CONFIG_FILE}"
        )
    if any(isinstance(p, DTensor) for p in own.values()):  # FSDP-sharded: every rank takes its shard
        load_into_shards(own, tensors)
    else:
        model.load_state_dict(tensors, strict=False)
    state = load_torch_file(folder / STATE_FILE, "run.resume")
    restore_rng_state(state.pop("rng"))
    return state


def load_into_shards(parameters: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into (possibly sharded) parameters, each rank cutting its own shard from the full tensor
    it read: no collective. (`set_model_state_dict` / `set_optimizer_state_dict` with `full_state_dict=True`
    scatter every tensor from rank 0 over the process group; with gloo on CPU those scatters hung in 2 of 5
    two-rank runs.)"""
    with torch.no_grad():
        for name, parameter in parameters.items():
            full = tensors[name].to(parameter.dtype)
            if isinstance(parameter, DTensor):
                shard = distribute_tensor(full, parameter.device_mesh, parameter.placements, src_data_rank=None)
                parameter.to_local().copy_(shard.to_local())
            else:
                parameter.copy_(full)


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
