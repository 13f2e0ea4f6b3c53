"""From a model config to a model ready to train or run: build, load weights, set precision, declare trainables."""

from __future__ import annotations

import torch

from chatbridge.config import ModelConfig
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.freezing import set_trainable
from chatbridge.models.loading import load_pretrained
from chatbridge.registry import MODELS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model_for_training(cfg: ModelConfig, device: torch.device | str = "cpu") -> ChatBridgeModel:
    """Build (random weights + the LLM folder), load every configured checkpoint, cast the frozen towers to their
    precision, and let exactly `cfg.trainable` train."""
    model = MODELS.get(cfg.arch)(cfg)
    load_pretrained(model, cfg)
    cast_frozen_towers(model, cfg)
    set_trainable(model, cfg.trainable)
    return model.to(device)


def cast_frozen_towers(model: ChatBridgeModel, cfg: ModelConfig) -> None:
    """Frozen encoders run in their configured precision (their LayerNorms still compute in fp32)."""
    for name, tower_cfg in (("image_encoder", cfg.vision), ("audio_encoder", cfg.audio)):
        if tower_cfg.frozen:
            getattr(model, name).to(DTYPES[tower_cfg.precision])
