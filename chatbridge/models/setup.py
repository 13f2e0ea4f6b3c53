"""From a model config to a model ready to train or run: build, load weights, set precision, declare trainables."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from timm.models.eva import EvaBlock
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

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
    prepare_for_training(model, cfg, torch.device(device).type)
    if getattr(model.llm, "hf_device_map", None):  # placed by accelerate (`model.llm.device_map`): leave it there
        for name, part in model.named_children():
            if name != "llm":
                part.to(device)
        return model
    return model.to(device)


def prepare_for_training(model: ChatBridgeModel, cfg: ModelConfig, device_type: str = "cpu") -> None:
    """Everything between loading the weights and moving to the device: frozen towers in their precision, the
    attention kernels for `device_type`, then exactly `cfg.trainable` trainable."""
    cast_frozen_towers(model, cfg)
    set_attention(model, attention_kernel(cfg.attention, device_type))
    for key, encoder_cfg in cfg.encoders.items():
        if encoder_cfg.frozen:
            set_attention(model.encoders[key], attention_kernel(cfg.attention, device_type, forward_only=True))
    set_trainable(model, cfg.trainable)


def attention_kernel(choice: str, device_type: str, forward_only: bool = False) -> str:
    """`model.attention` for a device and a part: `auto` is SDPA, except on CPU for the parts that gradients pass
    through (the Q-Former, the LLM), which take eager attention.

    On CPU, PyTorch's fused SDPA (flash attention for CPU) is slower than matmul + softmax at these sequence lengths
    in the backward pass, most of all in bf16 (the README's benchmark section: a quarter of a bf16 step for under 3 %
    of its FLOPs). A frozen tower runs forward only, and there SDPA is as fast in bf16 and twice as fast in fp32
    (EVA's 257-token attention at bench-medium: 23 against 47 ms per layer on one thread).
    """
    if choice == "auto":
        return "eager" if device_type == "cpu" and not forward_only else "sdpa"
    return choice


def set_attention(model: nn.Module, implementation: str) -> None:
    """Switch every attention of the model to `eager` or `sdpa`: Hugging Face parts (the LLM, the Q-Former) through
    their attention interface, timm's attention (EVA) through its `fused_attn` flag. Hand-written attention (BEATs)
    and `nn.MultiheadAttention` (ImageBind) have one kernel and are left alone. Weights and names do not change."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.set_attn_implementation(implementation)
        elif hasattr(module, "fused_attn"):
            module.fused_attn = implementation == "sdpa"


COMPILED_BLOCKS = (GradientCheckpointingLayer, EvaBlock)
"""Transformer blocks that `compile_blocks` compiles one by one: every Hugging Face layer (LLaMA decoder layers,
Q-Former layers) and timm's EVA blocks."""


def compile_blocks(model: nn.Module) -> dict[str, int]:
    """`torch.compile` each transformer block in place (`nn.Module.compile`: names and weights unchanged); returns
    how many blocks of each class.

    Blocks rather than the whole model: the glue between them (routing, splicing, the loss at supervised positions)
    has data-dependent shapes that would break the graph, and equal blocks share one compiled graph. What inductor
    gains on CPU is fusing the element-wise work around the matmuls (norms, rotary embedding, activations,
    residuals); the matmuls themselves stay oneDNN/MKL calls.
    """
    counts: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, COMPILED_BLOCKS):
            module.compile()
            counts[type(module).__name__] += 1
    return dict(counts)


LOW_PRECISION_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers whose weights (and own biases) a frozen tower stores in its precision, as the reference's
`convert_weights_to_fp16` did; norms, class token, position embedding and free-standing biases (EVA's q/v biases)
stay fp32, and the tower runs under autocast (`ChatBridgeModel.tower_features`)."""


def cast_frozen_towers(model: ChatBridgeModel, cfg: ModelConfig) -> None:
    """Store each frozen tower's matrix weights in its configured precision (see `LOW_PRECISION_MODULES`)."""
    for key, encoder_cfg in cfg.encoders.items():
        if encoder_cfg.frozen:
            for module in model.encoders[key].modules():
                if isinstance(module, LOW_PRECISION_MODULES):
                    module.to(TORCH_DTYPES[encoder_cfg.precision])


def enable_activation_checkpointing(model: ChatBridgeModel) -> list[str]:
    """Recompute the connector's and the LLM's activations in the backward pass (memory for compute).

    Gradients flow through the frozen LLM into the soft tokens, so its activations are kept for the backward pass
    like a trainable model's; recomputing them is the main saving for long stage-2 sequences. Returns the parts
    that were switched (connectors without a Q-Former have nothing to checkpoint).
    """
    parts = {"llm": model.llm}
    parts |= {f"connector.{name}": m for name, m in model.connector.named_modules() if isinstance(m, PreTrainedModel)}
    for name, part in parts.items():
        if name in model.frozen:
            _checkpoint_layers_in_eval_mode(part)
        elif hasattr(part, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            part.activation_checkpointing_enable({"use_reentrant": False})
        else:
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return sorted(parts)


def _checkpoint_layers_in_eval_mode(part: nn.Module) -> None:
    """Recompute each transformer layer of a frozen part in the backward pass.

    transformers checkpoints a layer only while it is in training mode, and frozen parts stay in eval mode (no
    dropout), so its own switch would recompute nothing there; torch's checkpoint around each layer's forward does,
    whenever gradients are being recorded. A layer already wrapped is left as it is.
    """
    for layer in part.modules():
        if isinstance(layer, GradientCheckpointingLayer) and not _is_checkpointed(layer.forward):
            layer.forward = functools.partial(_checkpointed, layer.forward)


def _is_checkpointed(forward: Callable[..., Any]) -> bool:
    return isinstance(forward, functools.partial) and forward.func is _checkpointed


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
