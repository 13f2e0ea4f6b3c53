"""`train.py --dry-run`: will this config fit? Parameter counts and a per-device memory estimate, no weights loaded.

The model is built on the meta device (shapes only), so a 13B configuration is checked in seconds on any machine.
The estimate is the usual back-of-the-envelope sum: weights + gradients + AdamW state + activations kept for the
backward pass. Gradients flow *through* the frozen LLM into the soft tokens, so its activations count although its
weights do not train; that term dominates for long sequences and is what activation checkpointing removes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from chatbridge.config import TrainConfig
from chatbridge.data.datasets.base import build_processor, soft_token_counts
from chatbridge.errors import UserError
from chatbridge.models.chatbridge import ChatBridgeModel, assemble_chatbridge
from chatbridge.models.freezing import count_parameters, set_trainable
from chatbridge.models.llm import build_causal_lm_on_meta

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GIB = 1024**3
# Bytes of activations kept per token and layer, in units of the hidden size, for a transformer layer in 16-bit
# without recomputation (Korthikanti et al., 2022: 34 sbh, ignoring the attention-score term that SDPA avoids);
# with checkpointing only each layer's input (2 sbh) is kept.
ACTIVATION_FACTOR = {False: 34, True: 2}


@dataclass
class MemoryEstimate:
    """Bytes per device for each term, plus the counts they come from."""

    trainable_parameters: int
    frozen_parameters: int
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


LLM_SHAPES = Path(__file__).parents[1] / "configs" / "llms"


def llm_shape(config: TrainConfig) -> dict:
    """The LLM's `config.json`: from its folder when it is on disk, else the shape `model.llm.architecture` names;
    a shipped (base) shape grows by the tokens the recipe adds (ChatBind's `<im_patch>`, ...), as loading does."""
    llm = config.model.llm
    in_folder = Path(llm.path or "") / "config.json"
    if in_folder.is_file():
        return json.loads(in_folder.read_text())
    if llm.architecture is None:
        raise UserError(
            f"model.llm.path: {in_folder} is missing and model.llm.architecture is unset; the dry run needs one of "
            f"them for the LLM's shape (shipped: {sorted(p.stem for p in LLM_SHAPES.glob('*.json'))})"
        )
    shipped = LLM_SHAPES / f"{llm.architecture}.json"
    if not shipped.is_file():
        known = sorted(p.stem for p in LLM_SHAPES.glob("*.json"))
        raise UserError(f"model.llm.architecture: unknown {llm.architecture!r}; shipped: {known}")
    shape = json.loads(shipped.read_text())
    return shape | {"vocab_size": shape["vocab_size"] + len(llm.added_tokens)}


def build_on_meta(config: TrainConfig) -> ChatBridgeModel:
    """The configured model on the meta device (shapes only: no weight is read or allocated)."""
    with torch.device("meta"):
        model = assemble_chatbridge(config.model, build_causal_lm_on_meta(llm_shape(config)))
    set_trainable(model, config.model.trainable)
    return model


def longest_sequence(config: TrainConfig) -> tuple[int, int]:
    """(batch size, sequence length) bounding the largest batch the mixture can produce.

    BOS + `max_txt_len` + every medium's soft tokens: exact for stage-1 captions, whose soft tokens come on top of
    `max_txt_len` text tokens, and an upper bound for stage 2, which cuts text and soft tokens to `max_txt_len`
    (docs/reference/chatbridge.md §2.2, §2.3.2).
    """
    worst = (1, 1 + config.model.max_txt_len)
    for dataset in config.datasets.values():
        processors = {modality: build_processor(modality, dataset.processor) for modality in dataset.modalities}
        length = 1 + config.model.max_txt_len + sum(soft_token_counts(config.model, processors).values())
        worst = max(worst, (dataset.batch_size, length), key=lambda shape: shape[0] * shape[1])
    return worst


def estimate_memory(
    config: TrainConfig, model: ChatBridgeModel, world_size: int, fsdp: bool, checkpointing: bool
) -> MemoryEstimate:
    """Per-device bytes for `config` on `world_size` devices.

    FSDP shards the LLM (`shard_model`): a frozen LLM's weights, and when the LLM trains, every trainable
    parameter with its gradient and AdamW state (fp32 masters: 4 + 4 + 8 bytes each); otherwise trainable
    parameters are replicated.
    """
    trainable, frozen = count_parameters(model)
    llm_trains = any(p.requires_grad for p in model.llm.parameters())
    shard = world_size if fsdp else 1
    frozen_llm = sum(p.numel() for p in model.llm.parameters() if not p.requires_grad)
    llm_bytes = frozen_llm * BYTES[config.model.llm.precision] / shard
    tower_bytes = sum(
        sum(p.numel() for p in model.encoders[key].parameters()) * BYTES[encoder.precision]
        for key, encoder in config.model.encoders.items()
    )
    trained = trainable / (shard if llm_trains else 1)
    batch, length = longest_sequence(config)
    llm_config = model.llm.config
    activation_bytes = batch * length * llm_config.hidden_size * llm_config.num_hidden_layers
    activation_bytes *= ACTIVATION_FACTOR[checkpointing] * BYTES["bf16"] / 2
    return MemoryEstimate(
        trainable_parameters=trainable,
        frozen_parameters=frozen,
        weights=llm_bytes + tower_bytes + trained * 4,
        gradients=trained * 4,
        optimizer=trained * 8,
        activations=activation_bytes,
    )


def dry_run_report(config: TrainConfig, world_size: int) -> str:
    """Counts and the memory table for this config, with and without FSDP / activation checkpointing."""
    model = build_on_meta(config)
    trainable, frozen = count_parameters(model)
    lines = [f"trainable parameters: {trainable:,}", f"frozen parameters:    {frozen:,}"]
    batch, length = longest_sequence(config)
    lines.append(f"largest batch: {batch} x {length} positions per device, world size {world_size}")
    lines.append(f"{'setting':<40}{'weights':>9}{'grads':>8}{'adamw':>8}{'activ.':>8}{'total GiB':>11}")
    for fsdp in (False, True):
        for checkpointing in (False, True):
            estimate = estimate_memory(config, model, world_size, fsdp, checkpointing)
            name = f"fsdp={'on ' if fsdp else 'off'} activation checkpointing={'on ' if checkpointing else 'off'}"
            terms = (estimate.weights, estimate.gradients, estimate.optimizer, estimate.activations)
            lines.append(f"{name:<40}" + "".join(f"{t / GIB:>8.2f} " for t in terms) + f"{estimate.total / GIB:>10.2f}")
    return "\n".join(lines)
