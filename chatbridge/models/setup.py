"""From a model config to a model ready to train or run: build, load weights, set precision, declare trainables."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from chatbridge.config import ModelConfig
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.freezing import set_trainable
from chatbridge.models.layers import TORCH_DTYPES
from chatbridge.models.loading import load_pretrained
from chatbridge.registry import MODELS


def build_model_for_training(cfg: ModelConfig, device: torch.device | str = "cpu") -> ChatBridgeModel:
    """Build (random weights + the LLM folder), load every configured checkpoint, cast the frozen towers to their
    precision, and let exactly `cfg.trainable` train."""
    model = MODELS.get(cfg.arch)(cfg)
    load_pretrained(model, cfg)
    cast_frozen_towers(model, cfg)
    set_trainable(model, cfg.trainable)
    if getattr(model.llm, "hf_device_map", None):  # placed by accelerate (`model.llm.device_map`): leave it there
        for name, part in model.named_children():
            if name != "llm":
                part.to(device)
        return model
    return model.to(device)


def cast_frozen_towers(model: ChatBridgeModel, cfg: ModelConfig) -> None:
    """Frozen encoders run in their configured precision (their LayerNorms still compute in fp32)."""
    for key, encoder_cfg in cfg.encoders.items():
        if encoder_cfg.frozen:
            model.encoders[key].to(TORCH_DTYPES[encoder_cfg.precision])


def enable_activation_checkpointing(model: ChatBridgeModel) -> list[str]:
    """Recompute the connector's and the LLM's activations in the backward pass (memory for compute).

    Gradients flow through the frozen LLM into the soft tokens, so its activations are kept for the backward pass
    like a trainable model's; recomputing them is the main saving for long stage-2 sequences. Returns the parts
    that were switched (connectors without a Q-Former have nothing to checkpoint).
    """
    parts = {"llm": model.llm}
    parts |= {f"connector.{name}": m for name, m in model.connector.named_modules() if isinstance(m, PreTrainedModel)}
    for part in parts.values():
        if hasattr(part, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            part.activation_checkpointing_enable({"use_reentrant": False})
        else:
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return sorted(parts)
