"""Weights after the build: the parts' own checkpoints, the released ChatBridge `.pth`, and our own format.

Build first, load second: `build_chatbridge` makes random weights (and loads the LLM from its folder);
`load_pretrained` then fills every encoder from its official file, the Q-Former from BLIP-2, and finally applies a
ChatBridge checkpoint. Every loader fails loudly, naming the file and the keys, instead of the reference's silent
non-strict loads (docs/reference/chatbridge.md §3.7, §3.8).

Our checkpoint format is a folder with `model.safetensors` (trainable tensors only, ~0.45 GB instead of the
reference's ~30 GB; its metadata carries `FORMAT_KEY` = `FORMAT_VERSION`) and `config.yaml` (the resolved config it
was trained with). Version 1 (written before encoders were held by key) had no version and other tensor names; it
is converted on load (`upgrade_tensor_names`); a newer version is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from chatbridge.config import ModelConfig, TrainConfig
from chatbridge.config_loading import save_config
from chatbridge.errors import UserError, load_torch_file
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.connectors.qformer import QFormerConfig, lavis_qformer_to_hf, read_blip2_checkpoint

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
FORMAT_KEY = "chatbridge_format"
FORMAT_VERSION = 2

# Released key (prefix) -> our name (prefix). Everything the released checkpoint trains or owns besides the frozen
# towers and the LLM (§3.1, §3.8); the released model is ChatBridge's layout: encoders `vision` and `audio`.
RELEASED_RENAMES = {
    "image_query_tokens": "connector.query_tokens.image",
    "audio_query_tokens": "connector.query_tokens.audio",
    "audio_trans.": "adapters.audio.",
    "llama_proj.": "llm_proj.",
    "ln_vision.": "encoders.vision.ln_vision.",
    "ln_audio.": "encoders.audio.ln_audio.",
    "visual_temporal_pos_embeds": "connector.temporal_embeddings.image",
    "audio_temporal_pos_embeds": "connector.temporal_embeddings.audio",
}
# Format 1 name prefix -> format 2 name prefix.
VERSION_1_RENAMES = {
    "perceiver.": "connector.",
    "audio_adapter.": "adapters.audio.",
    "image_encoder.": "encoders.vision.",
    "audio_encoder.": "encoders.audio.",
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
        raise UserError(f"{source}: not a ChatBridge checkpoint: missing {missing}, unexpected {unexpected[:10]}")
    renamed.update({f"connector.qformer.{k}": v for k, v in lavis_qformer_to_hf(qformer).items()})
    return renamed


def _rename(key: str, renames: dict[str, str] = RELEASED_RENAMES) -> str | None:
    for released, ours in renames.items():
        if key == released or (released.endswith(".") and key.startswith(released)):
            return ours + key.removeprefix(released)
    return None


def read_released_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a released `.pth` (`{"model": sd, ...}` or a bare state dict), in our names."""
    checkpoint = load_torch_file(path, "model.checkpoint")
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise UserError(f"{os.fspath(path)}: expected a state dict or {{'model': state_dict}}")
    return released_to_chatbridge(state_dict, source=os.fspath(path))


def bridge_parameters(model: ChatBridgeModel) -> set[str]:
    """What a ChatBridge checkpoint must set: every parameter outside the frozen towers and the LLM (connector,
    adapters, projection), plus any LLM parameter that trains (LoRA adapters, a fine-tuned LLM)."""
    names = set()
    for name, parameter in model.named_parameters():
        if not name.startswith(("encoders.", "llm.")) or (name.startswith("llm.") and parameter.requires_grad):
            names.add(name)
    return names


def assign_tensors(
    model: ChatBridgeModel, tensors: dict[str, Tensor], source: str, required: set[str] | frozenset = frozenset()
) -> None:
    """Copy `tensors` into the model's parameters/buffers of the same names.

    Raises:
        UserError: a name the model does not have, a shape that differs, or a `required` name the file lacks
            (a partial file would silently keep those parameters at their initialisation).
    """
    own = model.state_dict()
    missing = sorted(required - set(tensors))
    if missing:
        raise UserError(f"{source}: lacks {len(missing)} tensors the model needs from it, e.g. {missing[:5]}")
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        hint = " (built without model.connector.temporal_embeddings?)" if any("temporal" in k for k in unknown) else ""
        raise UserError(f"{source}: keys the model does not have{hint}: {unknown[:10]}")
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise UserError(f"{source}: shape mismatch: {wrong[:5]}")
    model.load_state_dict(tensors, strict=False)


def load_pretrained(model: ChatBridgeModel, cfg: ModelConfig) -> None:
    """Fill the parts from their official files, then apply the ChatBridge checkpoint (each step optional)."""
    for key, encoder_cfg in cfg.encoders.items():
        if encoder_cfg.checkpoint:
            model.encoders[key].load_checkpoint(Path(encoder_cfg.checkpoint))
    if isinstance(cfg.connector, QFormerConfig) and cfg.connector.blip2_checkpoint:
        load_blip2_into(model, Path(cfg.connector.blip2_checkpoint))
    if cfg.checkpoint:
        load_chatbridge_checkpoint(model, Path(cfg.checkpoint))


def load_blip2_into(model: ChatBridgeModel, path: Path) -> None:
    """BLIP-2's Q-Former and queries into the connector, its `ln_vision` into the encoder images are routed to."""
    connector, ln_vision = read_blip2_checkpoint(path)
    vision_key, _ = model.encoder_for("image")
    tensors = {f"connector.{name}": tensor for name, tensor in connector.items()}
    tensors |= {f"encoders.{vision_key}.ln_vision.{name}": tensor for name, tensor in ln_vision.items()}
    qformer = {name for name, _ in model.named_parameters() if name.startswith("connector.qformer.")}
    assign_tensors(model, tensors, os.fspath(path), qformer | {"connector.query_tokens.image"})


def load_chatbridge_checkpoint(model: ChatBridgeModel, path: Path) -> None:
    """Our folder / `.safetensors` (exact trainable set) or a released `.pth` (§3.8 key sets)."""
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"model.checkpoint: {path} does not exist")
    tensors = read_our_weights(path) if path.suffix == ".safetensors" else read_released_checkpoint(path)
    required = bridge_parameters(model)
    if not any(name.startswith("llm.") for name in tensors):  # a checkpoint of a frozen-LLM stage (ChatBind's 1st)
        required = {name for name in required if not name.startswith("llm.")}
    assign_tensors(model, tensors, os.fspath(path), required)
    logger.info("loaded %d tensors from %s", len(tensors), path)


def read_our_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of our `model.safetensors`, in current names; format 1 is converted, a newer one refused."""
    with safe_open(path, framework="pt") as handle:
        version = int((handle.metadata() or {}).get(FORMAT_KEY, 1))
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path} is checkpoint format {version}, newer than this chatbridge (format {FORMAT_VERSION}); upgrade"
        )
    tensors = load_file(path)
    if version == 1:
        logger.warning("%s is checkpoint format 1 (before encoders were held by key); converting its names", path)
        tensors = upgrade_tensor_names(tensors)
    return tensors


def upgrade_tensor_names(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format-1 tensor names -> format 2 (`perceiver.` -> `connector.`, `image_encoder.` -> `encoders.vision.`...)."""
    return {(_rename(name, VERSION_1_RENAMES) or name): tensor for name, tensor in tensors.items()}


def write_our_weights(tensors: dict[str, Tensor], path: Path) -> None:
    """`model.safetensors` with the format version in its metadata."""
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, path, {FORMAT_KEY: str(FORMAT_VERSION)})


def trainable_state_dict(model: ChatBridgeModel) -> dict[str, Tensor]:
    """The tensors that train, detached and contiguous on CPU: everything our checkpoint needs."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_chatbridge_checkpoint(model: ChatBridgeModel, config: TrainConfig, folder: Path) -> Path:
    """Write `model.safetensors` (trainable tensors) and `config.yaml` into `folder`."""
    return write_chatbridge_folder(trainable_state_dict(model), config, folder)


def write_chatbridge_folder(tensors: dict[str, Tensor], config: TrainConfig, folder: Path) -> Path:
    """Our checkpoint folder from tensors already gathered (`model.safetensors` and `config.yaml`)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_our_weights(tensors, folder / WEIGHTS_FILE)
    save_config(config, folder / CONFIG_FILE)
    return folder


def convert_released_checkpoint(source: Path, target: Path, config: TrainConfig) -> Path:
    """Released `.pth` -> our folder format; keeps every tensor the released file provides (ln_* included)."""
    target.mkdir(parents=True, exist_ok=True)
    write_our_weights(read_released_checkpoint(source), target / WEIGHTS_FILE)
    save_config(config, target / CONFIG_FILE)
    return target
