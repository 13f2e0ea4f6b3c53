"""Weights after the build: the parts' own checkpoints, the released ChatBridge `.pth`, and our own format.

Build first, load second: `build_chatbridge` makes random weights (and loads the LLM from its folder);
`load_pretrained` then fills EVA, BEATs and the Q-Former from their official files and finally applies a
ChatBridge checkpoint. Every loader fails loudly, naming the file and the keys, instead of the reference's
silent non-strict loads (spec 3.7, 3.8).

Our checkpoint format is a folder with `model.safetensors` (trainable tensors only, ~0.45 GB instead of the
reference's ~30 GB) and `config.yaml` (the resolved config it was trained with).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from chatbridge.config import ModelConfig, TrainConfig
from chatbridge.config_loading import save_config
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.encoders.audio import load_beats_checkpoint
from chatbridge.models.encoders.image import load_eva_checkpoint
from chatbridge.models.perceiver import lavis_qformer_to_hf, load_blip2_checkpoint

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"

# Released key (prefix) -> our name (prefix). Everything the released checkpoint trains or owns besides the frozen
# towers and the LLM (spec 3.1, 3.8).
RELEASED_RENAMES = {
    "image_query_tokens": "perceiver.query_tokens.image",
    "audio_query_tokens": "perceiver.query_tokens.audio",
    "audio_trans.": "audio_adapter.",
    "llama_proj.": "llm_proj.",
    "ln_vision.": "image_encoder.ln_vision.",
    "ln_audio.": "audio_encoder.ln_audio.",
    "visual_temporal_pos_embeds": "perceiver.temporal_embeddings.image",
    "audio_temporal_pos_embeds": "perceiver.temporal_embeddings.audio",
}
RELEASED_REQUIRED = ("Qformer.bert.", "image_query_tokens", "audio_query_tokens", "audio_trans.", "llama_proj.")
# Frozen towers and the LLM come from their own files; buffers are rebuilt by the modules.
RELEASED_IGNORED_PREFIXES = ("visual_encoder.", "audio_encoder.", "llama_model.")
RELEASED_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "position_ids")


def released_to_chatbridge(state_dict: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename a released ChatBridge state dict to this package's parameter names.

    Accepts the keys of `ChatBridge.state_dict()` with or without a DDP `module.` prefix. Raises ValueError naming
    `source` on a missing required group or on any key that is neither taken nor deliberately ignored.
    """
    state_dict = {key.removeprefix("module."): tensor for key, tensor in state_dict.items()}
    qformer, renamed, unexpected = {}, {}, []
    for key, tensor in state_dict.items():
        if key.startswith(RELEASED_IGNORED_PREFIXES) or key.endswith(RELEASED_IGNORED_SUFFIXES):
            continue
        if key.startswith("Qformer.bert."):
            qformer[key] = tensor
        elif (target := _rename(key)) is not None:
            renamed[target] = tensor
        else:
            unexpected.append(key)
    missing = [prefix for prefix in RELEASED_REQUIRED if not any(key.startswith(prefix) for key in state_dict)]
    if missing or unexpected:
        raise ValueError(f"{source}: not a ChatBridge checkpoint: missing {missing}, unexpected {unexpected[:10]}")
    renamed.update({f"perceiver.qformer.{k}": v for k, v in lavis_qformer_to_hf(qformer).items()})
    return renamed


def _rename(key: str) -> str | None:
    for released, ours in RELEASED_RENAMES.items():
        if key == released or (released.endswith(".") and key.startswith(released)):
            return ours + key.removeprefix(released)
    return None


def read_released_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a released `.pth` (`{"model": sd, ...}` or a bare state dict), in our names."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{os.fspath(path)}: expected a state dict or {{'model': state_dict}}")
    return released_to_chatbridge(state_dict, source=os.fspath(path))


def assign_tensors(model: ChatBridgeModel, tensors: dict[str, Tensor], source: str) -> None:
    """Copy `tensors` into the model's parameters/buffers of the same names; unknown names or shapes fail."""
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        hint = " (built without model.perceiver.temporal_embeddings?)" if any("temporal" in k for k in unknown) else ""
        raise ValueError(f"{source}: keys the model does not have{hint}: {unknown[:10]}")
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"{source}: shape mismatch: {wrong[:5]}")
    model.load_state_dict(tensors, strict=False)


def load_pretrained(model: ChatBridgeModel, cfg: ModelConfig, root: Path = Path(".")) -> None:
    """Fill the parts from their official files, then apply the ChatBridge checkpoint (each step optional)."""
    if cfg.vision.checkpoint:
        load_eva_checkpoint(model.image_encoder, root / cfg.vision.checkpoint)
    if cfg.audio.checkpoint:
        load_beats_checkpoint(model.audio_encoder, root / cfg.audio.checkpoint)
    if cfg.perceiver.blip2_checkpoint:
        path = root / cfg.perceiver.blip2_checkpoint
        assign_tensors(model, load_blip2_checkpoint(path), os.fspath(path))
    if cfg.checkpoint:
        load_chatbridge_checkpoint(model, root / cfg.checkpoint)


def load_chatbridge_checkpoint(model: ChatBridgeModel, path: Path) -> None:
    """Our folder / `.safetensors` (exact trainable set) or a released `.pth` (spec 3.8 key sets)."""
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"model.checkpoint: {path} does not exist")
    tensors = load_file(path) if path.suffix == ".safetensors" else read_released_checkpoint(path)
    assign_tensors(model, tensors, os.fspath(path))
    logger.info("loaded %d tensors from %s", len(tensors), path)


def trainable_state_dict(model: ChatBridgeModel) -> dict[str, Tensor]:
    """The tensors that train, detached and contiguous on CPU: everything our checkpoint needs."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_chatbridge_checkpoint(model: ChatBridgeModel, config: TrainConfig, folder: Path) -> Path:
    """Write `model.safetensors` (trainable tensors) and `config.yaml` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state_dict(model), folder / WEIGHTS_FILE)
    save_config(config, folder / CONFIG_FILE)
    return folder


def convert_released_checkpoint(source: Path, target: Path, config: TrainConfig) -> Path:
    """Released `.pth` -> our folder format; keeps every tensor the released file provides (ln_* included)."""
    target.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in read_released_checkpoint(source).items()}
    save_file(tensors, target / WEIGHTS_FILE)
    save_config(config, target / CONFIG_FILE)
    return target
