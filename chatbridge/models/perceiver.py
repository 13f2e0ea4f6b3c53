"""Connectors: turn encoder memory into a fixed set of tokens for the LLM projection (spec 1.7-1.9).

Every connector takes `memory (B, S, L, D_mem)` - S frames of a video (S = 1 for an image) or S audio segments, L
tokens each, already in the shared memory width (EVA's 1408; audio is mapped to it by `audio_trans` before this
module) - and a query set name ("image" serves images and videos, "audio" serves audio). It returns
`(B, Q, output_width)` and exposes `output_width` and `num_output_tokens(num_items, tokens_per_item)`, which the
collate uses to reserve placeholder positions. The connector knows nothing about the LLM: the model's `llm_proj`
maps `output_width` to the LLM width.

ChatBridge's connector is `SharedQFormer`: ONE BLIP-2 Q-Former for all modalities, with one learnable query set per
modality. The Q-Former is transformers' `Blip2QFormerModel`, which without `use_qformer_text_input` is exactly
LAVIS's Q-Former after ChatBridge's pruning (no word/position embeddings, no text FFN, no MLM head), so BLIP-2
weights load by renaming keys only (`lavis_qformer_to_hf`).
"""

from __future__ import annotations

import os
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from chatbridge.config import PerceiverConfig
from chatbridge.registry import CONNECTORS

QuerySet = Literal["image", "audio"]
QUERY_SETS: tuple[str, ...] = get_args(QuerySet)

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


def _check_query_set(query_set: str) -> None:
    if query_set not in QUERY_SETS:
        raise ValueError(f"unknown query set {query_set!r}; known: {list(QUERY_SETS)}")


def _make_query_tokens(num_query_tokens: int, hidden_size: int, audio_query_init: str) -> nn.ParameterDict:
    """Image queries ~ N(0, 0.02) as in LAVIS; audio queries zeros as in the reference (spec 1.8) or the same normal.

    Zero audio queries are all identical at the start and only diverge through the LLM loss; "normal" is offered as
    the obvious alternative for ablations.
    """
    if audio_query_init not in ("zeros", "normal"):
        raise ValueError(f"unknown audio_query_init {audio_query_init!r}; known: ['zeros', 'normal']")
    shape = (1, num_query_tokens, hidden_size)
    image = nn.init.normal_(torch.empty(shape), std=_QUERY_INIT_STD)
    audio = torch.zeros(shape)
    if audio_query_init == "normal":
        nn.init.normal_(audio, std=_QUERY_INIT_STD)
    return nn.ParameterDict({"image": nn.Parameter(image), "audio": nn.Parameter(audio)})


def _make_temporal_embeddings(lengths: dict[str, int] | None, memory_width: int) -> nn.ParameterDict | None:
    """One zero-initialised `(1, length, 1, D_mem)` table per query set (`multi_sample` in the reference, spec 1.9)."""
    if lengths is None:
        return None
    if sorted(lengths) != sorted(QUERY_SETS):
        raise ValueError(f"temporal lengths must cover exactly {list(QUERY_SETS)}, got {sorted(lengths)}")
    return nn.ParameterDict(
        {name: nn.Parameter(torch.zeros(1, length, 1, memory_width)) for name, length in lengths.items()}
    )


def _add_temporal(memory: Tensor, temporal: nn.ParameterDict | None, query_set: str) -> Tensor:
    """Add frame/segment i's embedding to all L tokens of frame/segment i; identity when disabled."""
    if temporal is None:
        return memory
    table = temporal[query_set]  # (1, max_S, 1, D)
    num_segments = memory.shape[1]
    if num_segments > table.shape[1]:
        raise ValueError(
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


class SharedQFormer(nn.Module):
    """ChatBridge's connector: one Q-Former shared by all modalities, one learnable query set per modality.

    Images and videos use the "image" queries, audio uses the "audio" queries; everything else (all Q-Former
    weights) is shared, which is what lets audio borrow BLIP-2's vision-language alignment.

    Args:
        qformer: The Q-Former, built by `build_shared_qformer` (random init) and loaded later.
        num_query_tokens: Q, queries per set.
        audio_query_init: "zeros" (reference) or "normal".
        temporal_lengths: Frames / segments covered by a learned per-frame embedding, keyed by query set;
            None disables the embeddings (the released model was trained without them).
    """

    def __init__(
        self,
        qformer: Blip2QFormerModel,
        num_query_tokens: int,
        audio_query_init: str,
        temporal_lengths: dict[str, int] | None,
    ) -> None:
        super().__init__()
        self.qformer = qformer
        self.query_tokens = _make_query_tokens(num_query_tokens, qformer.config.hidden_size, audio_query_init)
        self.temporal_embeddings = _make_temporal_embeddings(temporal_lengths, qformer.config.encoder_hidden_size)
        self.output_width: int = qformer.config.hidden_size
        self.num_query_tokens = num_query_tokens

    def num_output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        """Always Q: the queries summarise any number of frames/segments."""
        return self.num_query_tokens

    def forward(self, memory: Tensor, query_set: str) -> Tensor:
        """Map `memory (B, S, L, D_mem)` to `(B, Q, H)` with the queries of `query_set`."""
        _check_query_set(query_set)
        memory = _add_temporal(memory, self.temporal_embeddings, query_set)
        return _cross_attend(self.qformer, self.query_tokens[query_set], memory)


class PerModalityQFormer(nn.Module):
    """X-InstructBLIP-style connector: a separate Q-Former (and query set) per modality, same interface.

    An ablation of ChatBridge's sharing: the audio Q-Former no longer shares weights with the vision one.

    Args:
        qformers: One Q-Former per query set, all with the same width.
        num_query_tokens: Q, queries per set.
        audio_query_init: "zeros" or "normal".
        temporal_lengths: As in `SharedQFormer`.
    """

    def __init__(
        self,
        qformers: dict[str, Blip2QFormerModel],
        num_query_tokens: int,
        audio_query_init: str,
        temporal_lengths: dict[str, int] | None,
    ) -> None:
        super().__init__()
        if sorted(qformers) != sorted(QUERY_SETS):
            raise ValueError(f"need one Q-Former per query set {list(QUERY_SETS)}, got {sorted(qformers)}")
        config = qformers["image"].config
        self.qformers = nn.ModuleDict(qformers)
        self.query_tokens = _make_query_tokens(num_query_tokens, config.hidden_size, audio_query_init)
        self.temporal_embeddings = _make_temporal_embeddings(temporal_lengths, config.encoder_hidden_size)
        self.output_width: int = config.hidden_size
        self.num_query_tokens = num_query_tokens

    def num_output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        """Always Q, as for `SharedQFormer`."""
        return self.num_query_tokens

    def forward(self, memory: Tensor, query_set: str) -> Tensor:
        """Map `memory (B, S, L, D_mem)` to `(B, Q, H)` with the Q-Former and queries of `query_set`."""
        _check_query_set(query_set)
        memory = _add_temporal(memory, self.temporal_embeddings, query_set)
        return _cross_attend(self.qformers[query_set], self.query_tokens[query_set], memory)


class LinearConnector(nn.Module):
    """LLaVA-1 style: no resampling; every memory token goes to the LLM, and `llm_proj` is the linear projector.

    The query set is accepted (and checked) only to keep the connector interface uniform.
    """

    def __init__(self, memory_width: int) -> None:
        super().__init__()
        self.output_width = memory_width

    def num_output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        """All S*L tokens pass through."""
        return num_items * tokens_per_item

    def forward(self, memory: Tensor, query_set: str) -> Tensor:
        """`(B, S, L, D_mem)` -> `(B, S*L, D_mem)`."""
        _check_query_set(query_set)
        return memory.flatten(1, 2)


class MLPConnector(nn.Module):
    """LLaVA-1.5 style: Linear + GELU per token; followed by the model's `llm_proj` this is `mlp2x_gelu`.

    LLaVA-1.5's first layer already has the LLM width, so set `hidden_size` to it to reproduce that exactly.
    """

    def __init__(self, memory_width: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(memory_width, hidden_size), nn.GELU())
        self.output_width = hidden_size

    def num_output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        """All S*L tokens pass through."""
        return num_items * tokens_per_item

    def forward(self, memory: Tensor, query_set: str) -> Tensor:
        """`(B, S, L, D_mem)` -> `(B, S*L, hidden_size)`."""
        _check_query_set(query_set)
        return self.proj(memory.flatten(1, 2))


def _hf_qformer(cfg: PerceiverConfig, memory_width: int) -> Blip2QFormerModel:
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


def _temporal_lengths(cfg: PerceiverConfig) -> dict[str, int] | None:
    if not cfg.temporal_embeddings:
        return None
    return {"image": cfg.max_frames, "audio": cfg.max_audio_segments}


def _reject_temporal(cfg: PerceiverConfig) -> None:
    if cfg.temporal_embeddings:
        raise ValueError(f"temporal_embeddings needs a Q-Former connector, not {cfg.name!r}")


@CONNECTORS.register("shared_qformer")
def build_shared_qformer(cfg: PerceiverConfig, memory_width: int) -> nn.Module:
    """ChatBridge's connector, randomly initialised (BLIP-2 weights come later via `load_blip2_checkpoint`)."""
    qformer = _hf_qformer(cfg, memory_width)
    return SharedQFormer(qformer, cfg.num_query_tokens, cfg.audio_query_init, _temporal_lengths(cfg))


@CONNECTORS.register("qformer_per_modality")
def build_qformer_per_modality(cfg: PerceiverConfig, memory_width: int) -> nn.Module:
    """One Q-Former per query set, randomly initialised."""
    qformers = {name: _hf_qformer(cfg, memory_width) for name in QUERY_SETS}
    return PerModalityQFormer(qformers, cfg.num_query_tokens, cfg.audio_query_init, _temporal_lengths(cfg))


@CONNECTORS.register("linear")
def build_linear_connector(cfg: PerceiverConfig, memory_width: int) -> nn.Module:
    """Identity connector (LLaVA-1); only `name` and `temporal_embeddings` of `cfg` are read."""
    _reject_temporal(cfg)
    return LinearConnector(memory_width)


@CONNECTORS.register("mlp")
def build_mlp_connector(cfg: PerceiverConfig, memory_width: int) -> nn.Module:
    """Linear + GELU connector (LLaVA-1.5 with `llm_proj`); its width is `cfg.hidden_size`."""
    _reject_temporal(cfg)
    return MLPConnector(memory_width, cfg.hidden_size)


def _is_lavis_text_part(key: str) -> bool:
    if key.startswith(_LAVIS_TEXT_PREFIXES):
        return True
    parts = key.split(".")  # Qformer.bert.encoder.layer.N.<block>.*
    return key.startswith(_LAVIS_PREFIX + "encoder.layer.") and len(parts) > 5 and parts[5] in _LAVIS_TEXT_FFN_BLOCKS


def _rename_layer_key(name: str, source_core: str, target_core: str, original: str) -> str:
    """Rename `encoder.layer.N.<block>.<source_core>.*` to `<target_core>`; reject anything but a query block."""
    parts = name.split(".")
    if parts[:2] != ["encoder", "layer"] or len(parts) < 6 or parts[3] not in _QUERY_BLOCKS:
        raise ValueError(f"unknown Q-Former key {original!r}")
    if parts[3] in _ATTENTION_BLOCKS and parts[4] == source_core:
        parts[4] = target_core
    return ".".join(parts)


def _lavis_key_to_hf(key: str) -> str:
    if not key.startswith(_LAVIS_PREFIX):
        raise ValueError(f"unknown Q-Former key {key!r}: LAVIS Q-Former keys start with {_LAVIS_PREFIX!r}")
    name = key.removeprefix(_LAVIS_PREFIX)
    if name.startswith("embeddings.LayerNorm."):
        return "layernorm." + name.removeprefix("embeddings.LayerNorm.")
    return _rename_layer_key(name, "self", "attention", key)


def _hf_key_to_lavis(key: str) -> str:
    if key.startswith("layernorm."):
        return _LAVIS_PREFIX + "embeddings.LayerNorm." + key.removeprefix("layernorm.")
    return _LAVIS_PREFIX + _rename_layer_key(key, "attention", "self", key)


def lavis_qformer_to_hf(state_dict: dict[str, Tensor], *, drop_text_parts: bool = False) -> dict[str, Tensor]:
    """Rename a LAVIS / ChatBridge Q-Former state dict to `Blip2QFormerModel` names (spec 3.2).

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
        raise ValueError(
            f"{len(text_keys)} text-branch Q-Former keys such as {text_keys[:3]}; ChatBridge's Q-Former has no text "
            "branch - pass drop_text_parts=True to drop them (as when loading BLIP-2)"
        )
    return renamed


def hf_qformer_to_lavis(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `lavis_qformer_to_hf`: `Blip2QFormerModel` names -> `Qformer.bert.*` names (no `position_ids`)."""
    return {_hf_key_to_lavis(key): tensor for key, tensor in state_dict.items()}


def load_blip2_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the tensors ChatBridge initialises from a LAVIS BLIP-2 checkpoint, renamed to this package's names.

    Taken: the pruned Q-Former (`Qformer.bert.*` -> `perceiver.qformer.*`), `query_tokens` ->
    `perceiver.query_tokens.image` (spec 3.7's remap) and `ln_vision.*` -> `image_encoder.ln_vision.*`.
    Ignored on purpose: `visual_encoder.*` (EVA comes from its own file), the Q-Former's text branch
    (`Qformer.cls.*`, word/position embeddings, per-layer text FFN) and `position_ids`, the LLM side (`t5_proj.*`,
    `t5_model.*`, `opt_proj.*`, `llm_proj.*`, ...) and the stage-1 heads (`vision_proj`, `text_proj`, `itm_head`,
    `temp`). Audio queries have no BLIP-2 counterpart and keep their own init.

    Raises:
        ValueError: Naming the file, if it is not `{"model": state_dict}` or lacks the Q-Former, `query_tokens` or
            `ln_vision`.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{os.fspath(path)!r} is not a LAVIS checkpoint: expected a dict with a 'model' state dict")
    state_dict = checkpoint["model"]
    qformer = {key: tensor for key, tensor in state_dict.items() if key.startswith("Qformer.")}
    required = ("query_tokens", "ln_vision.weight", "ln_vision.bias")
    missing = [key for key in required if key not in state_dict] + ([] if qformer else ["Qformer.bert.*"])
    if missing:
        raise ValueError(f"{os.fspath(path)!r} is not a BLIP-2 checkpoint: missing {missing}")
    tensors = {f"perceiver.qformer.{key}": t for key, t in lavis_qformer_to_hf(qformer, drop_text_parts=True).items()}
    tensors["perceiver.query_tokens.image"] = state_dict["query_tokens"]
    tensors["image_encoder.ln_vision.weight"] = state_dict["ln_vision.weight"]
    tensors["image_encoder.ln_vision.bias"] = state_dict["ln_vision.bias"]
    return tensors
