"""ChatBridge's connector: BLIP-2 Q-Formers that turn encoder memory into a fixed number of query tokens.

See docs/reference/chatbridge.md §1.7-1.9. A connector takes `memory (B, S, L, D_mem)` - S frames of a video (S = 1
for an image) or S audio segments, L tokens each, already in the shared memory width (EVA's 1408; the model's
adapters map other encoders to it) - and the name of a query set (from `model.routes`: "image" serves images and
videos, "audio" serves audio). It returns `(B, Q, output_width)`; the model's `llm_proj` maps that to the LLM.

`SharedQFormer` is ChatBridge's: ONE Q-Former for all modalities, one learnable query set per modality. The Q-Former
is transformers' `Blip2QFormerModel`, which without `use_qformer_text_input` is exactly LAVIS's Q-Former after
ChatBridge's pruning (no word/position embeddings, no text FFN, no MLM head), so BLIP-2 weights load by renaming
keys only (`lavis_qformer_to_hf`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from chatbridge.config import ConnectorConfig
from chatbridge.errors import UserError, load_torch_file
from chatbridge.registry import CONNECTORS

_QUERY_INIT_STD = 0.02  # BERT initializer_range; LAVIS initialises query_tokens with it.
_LAVIS_PREFIX = "Qformer.bert."
_LAVIS_POSITION_IDS = "Qformer.bert.embeddings.position_ids"
# Parts of the LAVIS Q-Former that only serve BLIP-2's text branch; ChatBridge deletes them after construction.
_LAVIS_TEXT_PREFIXES = (
    "Qformer.cls.",
    "Qformer.bert.embeddings.word_embeddings.",
    "Qformer.bert.embeddings.position_embeddings.",
)
_LAVIS_TEXT_FFN_BLOCKS = ("intermediate", "output")  # per layer, applied to text tokens only
# Per-layer blocks kept by both LAVIS (after pruning) and HF; only the attention core is named differently:
# LAVIS `<block>.self.*` is HF `<block>.attention.*`.
_QUERY_BLOCKS = ("attention", "crossattention", "intermediate_query", "output_query")
_ATTENTION_BLOCKS = ("attention", "crossattention")


@dataclass
class QFormerConfig(ConnectorConfig):
    """A BLIP-2 Q-Former connector; defaults are ChatBridge's shared Q-Former."""

    name: str = "shared_qformer"
    num_layers: int = 12
    """Q-Former layers."""
    hidden_size: int = 768
    """Q-Former width (D_q)."""
    num_heads: int = 12
    """Q-Former attention heads."""
    intermediate_size: int = 3072
    """Q-Former feed-forward width."""
    cross_attention_frequency: int = 2
    """Cross-attention in every layer whose index is a multiple of this."""
    num_query_tokens: int = 32
    """Learnable queries per query set."""
    dropout: float = 0.0
    """Hidden and attention dropout (the reference: 0 in stage 1, 0.1 in stage 2)."""
    layer_norm_eps: float = 1e-12
    """Q-Former LayerNorm eps (BERT)."""
    zero_query_sets: list[str] = field(default_factory=lambda: ["audio"])
    """Query sets initialised to zeros, as the reference's audio queries; the others ~ N(0, 0.02) like BLIP-2's."""
    temporal_embeddings: bool = False
    """Add a learned embedding per frame / segment before the Q-Former (`multi_sample` in the reference)."""
    temporal_lengths: dict[str, int] = field(default_factory=lambda: {"image": 4, "audio": 2})
    """Frames / segments each query set's temporal embedding covers."""
    blip2_checkpoint: str | None = field(
        default=None,
        metadata={
            "path": "the LAVIS BLIP-2 checkpoint `blip2_pretrained_flant5xxl.pth` (its `model` holds the Q-Former)"
        },
    )
    """BLIP-2 weights that initialise the Q-Former, the image queries and `ln_vision`; None keeps the random init."""

    def output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        """Always Q: the queries summarise any number of frames or segments."""
        return self.num_query_tokens

    def output_width(self, memory_width: int) -> int:
        return self.hidden_size


def _make_query_tokens(query_sets: Sequence[str], cfg: QFormerConfig) -> nn.ParameterDict:
    """One (1, Q, H) parameter per query set, created in route order (so a seed gives the same values).

    Zero audio queries (the reference) are all identical at the start and only diverge through the LLM loss.
    """
    tokens = {}
    for name in query_sets:
        values = torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size)
        if name not in cfg.zero_query_sets:
            nn.init.normal_(values, std=_QUERY_INIT_STD)
        tokens[name] = nn.Parameter(values)
    return nn.ParameterDict(tokens)


def _make_temporal_embeddings(
    query_sets: Sequence[str], cfg: QFormerConfig, memory_width: int
) -> nn.ParameterDict | None:
    """One zero-initialised `(1, length, 1, D_mem)` table per query set (`multi_sample`, §1.9)."""
    if not cfg.temporal_embeddings:
        return None
    missing = [name for name in query_sets if name not in cfg.temporal_lengths]
    if missing:
        raise UserError(f"model.connector.temporal_lengths has no length for query sets {missing}")
    return nn.ParameterDict(
        {name: nn.Parameter(torch.zeros(1, cfg.temporal_lengths[name], 1, memory_width)) for name in query_sets}
    )


def _add_temporal(memory: Tensor, temporal: nn.ParameterDict | None, query_set: str) -> Tensor:
    """Add frame/segment i's embedding to all L tokens of frame/segment i; identity when disabled."""
    if temporal is None:
        return memory
    table = temporal[query_set]  # (1, max_S, 1, D)
    num_segments = memory.shape[1]
    if num_segments > table.shape[1]:
        raise UserError(
            f"{num_segments} {query_set} frames/segments but the temporal embedding covers {table.shape[1]}"
        )
    return memory + table[:, :num_segments]


def _cross_attend(qformer: Blip2QFormerModel, queries: Tensor, memory: Tensor) -> Tensor:
    """Run the Q-Former's queries `(1, Q, H)` over all S*L memory tokens of each sample in one batched call.

    Frames/segments are concatenated token-wise, as in the reference: the queries see every token at once.
    """
    batch, num_segments, num_tokens, width = memory.shape
    memory = memory.reshape(batch, num_segments * num_tokens, width)  # (B, S*L, D)
    memory_mask = memory.new_ones(batch, num_segments * num_tokens, dtype=torch.long)  # nothing is padding
    output = qformer(
        query_embeds=queries.expand(batch, -1, -1),
        encoder_hidden_states=memory,
        encoder_attention_mask=memory_mask,
    )
    return output.last_hidden_state  # (B, Q, H)


def _check_query_set(tokens: nn.ParameterDict, query_set: str) -> None:
    if query_set not in tokens:
        raise UserError(f"unknown query set {query_set!r}; known: {list(tokens)}")


class SharedQFormer(nn.Module):
    """ChatBridge's connector: one Q-Former shared by all modalities, one learnable query set per modality.

    Images and videos use the "image" queries, audio uses the "audio" queries; everything else (all Q-Former
    weights) is shared, which is what lets audio borrow BLIP-2's vision-language alignment.

    Args:
        qformer: The Q-Former, built by `build_shared_qformer` (random init) and loaded later.
        query_tokens: One (1, Q, H) parameter per query set.
        temporal_embeddings: Per-frame/segment embeddings per query set, or None (the released model has none).
    """

    def __init__(
        self,
        qformer: Blip2QFormerModel,
        query_tokens: nn.ParameterDict,
        temporal_embeddings: nn.ParameterDict | None,
    ) -> None:
        super().__init__()
        self.qformer = qformer
        self.query_tokens = query_tokens
        self.temporal_embeddings = temporal_embeddings
        self.output_width: int = qformer.config.hidden_size

    def forward(self, memory: Tensor, query_set: str) -> Tensor:
        """Map `memory (B, S, L, D_mem)` to `(B, Q, H)` with the queries of `query_set`."""
        _check_query_set(self.query_tokens, query_set)
        memory = _add_temporal(memory, self.temporal_embeddings, query_set)
        return _cross_attend(self.qformer, self.query_tokens[query_set], memory)


class PerModalityQFormer(nn.Module):
    """X-InstructBLIP-style connector: a separate Q-Former (and query set) per modality, same interface.

    An ablation of ChatBridge's sharing: the audio Q-Former no longer shares weights with the vision one.
    """

    def __init__(
        self,
        qformers: dict[str, Blip2QFormerModel],
        query_tokens: nn.ParameterDict,
        temporal_embeddings: nn.ParameterDict | None,
    ) -> None:
        super().__init__()
        if sorted(qformers) != sorted(query_tokens):
            raise UserError(f"need one Q-Former per query set {list(query_tokens)}, got {sorted(qformers)}")
        self.qformers = nn.ModuleDict(qformers)
        self.query_tokens = query_tokens
        self.temporal_embeddings = temporal_embeddings
        self.output_width: int = next(iter(qformers.values())).config.hidden_size

    def forward(self, memory: Tensor, query_set: str) -> Tensor:
        """Map `memory (B, S, L, D_mem)` to `(B, Q, H)` with the Q-Former and queries of `query_set`."""
        _check_query_set(self.query_tokens, query_set)
        memory = _add_temporal(memory, self.temporal_embeddings, query_set)
        return _cross_attend(self.qformers[query_set], self.query_tokens[query_set], memory)


def _hf_qformer(cfg: QFormerConfig, memory_width: int) -> Blip2QFormerModel:
    """A randomly initialised Q-Former without the text branch (`use_qformer_text_input=False`)."""
    config = Blip2QFormerConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        cross_attention_frequency=cfg.cross_attention_frequency,
        encoder_hidden_size=memory_width,
        use_qformer_text_input=False,
    )
    return Blip2QFormerModel(config)


@CONNECTORS.register("shared_qformer")
def build_shared_qformer(cfg: QFormerConfig, memory_width: int, query_sets: Sequence[str]) -> SharedQFormer:
    """ChatBridge's connector, randomly initialised (BLIP-2 weights come later via `read_blip2_checkpoint`)."""
    qformer = _hf_qformer(cfg, memory_width)
    tokens = _make_query_tokens(query_sets, cfg)
    return SharedQFormer(qformer, tokens, _make_temporal_embeddings(query_sets, cfg, memory_width))


@CONNECTORS.register("qformer_per_modality")
def build_qformer_per_modality(cfg: QFormerConfig, memory_width: int, query_sets: Sequence[str]) -> PerModalityQFormer:
    """One Q-Former per query set, randomly initialised."""
    qformers = {name: _hf_qformer(cfg, memory_width) for name in query_sets}
    tokens = _make_query_tokens(query_sets, cfg)
    return PerModalityQFormer(qformers, tokens, _make_temporal_embeddings(query_sets, cfg, memory_width))


def _is_lavis_text_part(key: str) -> bool:
    if key.startswith(_LAVIS_TEXT_PREFIXES):
        return True
    parts = key.split(".")  # Qformer.bert.encoder.layer.N.<block>.*
    return key.startswith(_LAVIS_PREFIX + "encoder.layer.") and len(parts) > 5 and parts[5] in _LAVIS_TEXT_FFN_BLOCKS


def _rename_layer_key(name: str, source_core: str, target_core: str, original: str) -> str:
    """Rename `encoder.layer.N.<block>.<source_core>.*` to `<target_core>`; reject anything but a query block."""
    parts = name.split(".")
    if parts[:2] != ["encoder", "layer"] or len(parts) < 6 or parts[3] not in _QUERY_BLOCKS:
        raise UserError(f"unknown Q-Former key {original!r}")
    if parts[3] in _ATTENTION_BLOCKS and parts[4] == source_core:
        parts[4] = target_core
    return ".".join(parts)


def _lavis_key_to_hf(key: str) -> str:
    if not key.startswith(_LAVIS_PREFIX):
        raise UserError(f"unknown Q-Former key {key!r}: LAVIS Q-Former keys start with {_LAVIS_PREFIX!r}")
    name = key.removeprefix(_LAVIS_PREFIX)
    if name.startswith("embeddings.LayerNorm."):
        return "layernorm." + name.removeprefix("embeddings.LayerNorm.")
    return _rename_layer_key(name, "self", "attention", key)


def _hf_key_to_lavis(key: str) -> str:
    if key.startswith("layernorm."):
        return _LAVIS_PREFIX + "embeddings.LayerNorm." + key.removeprefix("layernorm.")
    return _LAVIS_PREFIX + _rename_layer_key(key, "attention", "self", key)


def lavis_qformer_to_hf(state_dict: dict[str, Tensor], *, drop_text_parts: bool = False) -> dict[str, Tensor]:
    """Rename a LAVIS / ChatBridge Q-Former state dict to `Blip2QFormerModel` names (docs/reference/chatbridge.md §3.2).

    Input keys carry the full LAVIS prefix, exactly as in BLIP-2 and ChatBridge checkpoints: `Qformer.bert.*` (and
    `Qformer.cls.*`); output keys are relative to `Blip2QFormerModel`, ready for its `load_state_dict`. The
    `position_ids` buffer is always dropped (HF recomputes it and the queries never use it).

    Args:
        state_dict: The `Qformer.*` entries of a checkpoint.
        drop_text_parts: Drop BLIP-2's text branch (word/position embeddings, per-layer `intermediate`/`output`
            text FFN, `cls` MLM head), which ChatBridge prunes. If False their presence is an error, so that a
            ChatBridge checkpoint that unexpectedly contains them is noticed.

    Raises:
        ValueError: On text-branch keys when `drop_text_parts` is False, and on any key that is not part of the
            LAVIS Q-Former.
    """
    renamed: dict[str, Tensor] = {}
    text_keys = []
    for key, tensor in state_dict.items():
        if key == _LAVIS_POSITION_IDS:
            continue
        if _is_lavis_text_part(key):
            text_keys.append(key)
            continue
        renamed[_lavis_key_to_hf(key)] = tensor
    if text_keys and not drop_text_parts:
        raise UserError(
            f"{len(text_keys)} text-branch Q-Former keys such as {text_keys[:3]}; ChatBridge's Q-Former has no text "
            "branch - pass drop_text_parts=True to drop them (as when loading BLIP-2)"
        )
    return renamed


def hf_qformer_to_lavis(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `lavis_qformer_to_hf`: `Blip2QFormerModel` names -> `Qformer.bert.*` names (no `position_ids`)."""
    return {_hf_key_to_lavis(key): tensor for key, tensor in state_dict.items()}


def read_blip2_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The tensors ChatBridge initialises from a LAVIS BLIP-2 checkpoint: (connector tensors, `ln_vision` tensors).

    Connector tensors are named relative to `SharedQFormer`: the pruned Q-Former (`Qformer.bert.*` ->
    `qformer.*`) and `query_tokens` -> `query_tokens.image` (the remap of §3.7). `ln_vision.*` is returned
    separately as `weight`/`bias`: it belongs to the image encoder. Ignored on purpose: `visual_encoder.*` (EVA comes
    from its own file), the Q-Former's text branch and `position_ids`, the LLM side (`t5_proj.*`, `t5_model.*`,
    `opt_proj.*`, `llm_proj.*`, ...) and the stage-1 heads (`vision_proj`, `text_proj`, `itm_head`, `temp`). Audio
    queries have no BLIP-2 counterpart and keep their own init.

    Raises:
        ValueError: Naming the file, if it is not `{"model": state_dict}` or lacks the Q-Former, `query_tokens` or
            `ln_vision`.
    """
    checkpoint = load_torch_file(path, "model.connector.blip2_checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise UserError(f"{os.fspath(path)!r} is not a LAVIS checkpoint: expected a dict with a 'model' state dict")
    state_dict = checkpoint["model"]
    qformer = {key: tensor for key, tensor in state_dict.items() if key.startswith("Qformer.")}
    required = ("query_tokens", "ln_vision.weight", "ln_vision.bias")
    missing = [key for key in required if key not in state_dict] + ([] if qformer else ["Qformer.bert.*"])
    if missing:
        raise UserError(f"{os.fspath(path)!r} is not a BLIP-2 checkpoint: missing {missing}")
    connector = {f"qformer.{key}": t for key, t in lavis_qformer_to_hf(qformer, drop_text_parts=True).items()}
    connector["query_tokens.image"] = state_dict["query_tokens"]
    ln_vision = {"weight": state_dict["ln_vision.weight"], "bias": state_dict["ln_vision.bias"]}
    return connector, ln_vision
