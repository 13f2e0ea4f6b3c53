"""ChatBridge: frozen encoders -> one shared connector -> projection -> soft tokens spliced into a frozen LLM.

Method, per sample (docs/reference/chatbridge.md §1.1): every image, video frame and audio segment is encoded by the
frozen tower its modality is routed to; the features of one media block (all frames of a video, all segments of a
clip) form one memory, mapped to the connector's width by an adapter where the tower is narrower; the connector
turns that memory into soft tokens with the modality's learnable queries; `llm_proj` maps them to the LLM width; they
replace the placeholder positions of the text that the data pipeline prepared.

The model offers the steps separately, for generation: `encode_media` (media -> soft tokens) and `embed` (token ids
and soft tokens -> input embeddings); `forward` is the training loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chatbridge.config import ModelConfig, RouteConfig
from chatbridge.data.batch import IGNORE_INDEX, ChatBridgeBatch
from chatbridge.models.encoders.base import Encoder
from chatbridge.models.token_rows import TokenRows, token_rows_from_llm
from chatbridge.models.vocab_loss import token_cross_entropy
from chatbridge.registry import CONNECTORS, ENCODERS, LLMS, MODELS


@dataclass
class ChatBridgeOutput:
    """Attributes:
    loss: scalar, mean cross-entropy over every supervised token of the batch (0 if there is none).
    per_sample_loss: (B,) mean cross-entropy over each sample's supervised tokens (0 for a sample with none);
        what likelihood-based evaluation ranks options by.
    token_losses: (K,) cross-entropy at each of the K supervised positions, in row-major order; vocabulary-wide
        logits are never kept (`vocab_loss`).
    num_supervised_tokens: K.
    """

    loss: Tensor
    per_sample_loss: Tensor
    token_losses: Tensor
    num_supervised_tokens: int


class ChatBridgeModel(nn.Module):
    """The assembled model; parts are built by their registered builders and passed in (composition).

    Args:
        encoders: Frozen towers by key (`model.encoders`).
        routes: Modality -> (encoder key, query set).
        memory_encoder: The encoder whose width the connector's memory has; every other encoder gets an adapter.
        connector: Memory (N, S, L, D_mem) and a query set -> (N, Q, D_c).
        llm: A Hugging Face causal LM.
        frozen: Module names (`encoders.vision`, `llm`, ...) that stay in eval mode and run without gradients.
        token_rows: Input rows of added tokens that train apart from the LLM's embedding (ChatBind), or None.
        splice_last_medium_only: Faithful ChatBind quirk (docs/reference/chatbind.md §2.6): only the last medium of
            each sample replaces its slot; earlier slots keep their token embedding (`<im_patch>`).
    """

    def __init__(  # noqa: PLR0913 - the parts of the method, one argument each
        self,
        encoders: Mapping[str, Encoder],
        routes: Mapping[str, RouteConfig],
        memory_encoder: str,
        connector: nn.Module,
        llm: nn.Module,
        frozen: Sequence[str] = (),
        token_rows: TokenRows | None = None,
        splice_last_medium_only: bool = False,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.routes = {modality: (route.encoder, route.queries) for modality, route in routes.items()}
        width = encoders[memory_encoder].width
        # `audio_trans` in the reference: maps a narrower tower to the memory width, so that the one connector's
        # cross-attention (whose K/V take memory-width inputs) serves every modality.
        self.adapters = nn.ModuleDict(
            {key: nn.Linear(encoder.width, width) for key, encoder in encoders.items() if encoder.width != width}
        )
        self.connector = connector
        self.llm_proj = nn.Linear(connector.output_width, llm.config.hidden_size)
        self.llm = llm
        self.frozen = tuple(frozen)
        self.token_rows = token_rows
        self.splice_last_medium_only = splice_last_medium_only

    def train(self, mode: bool = True) -> ChatBridgeModel:
        """Frozen parts stay in eval mode whatever the caller asks (their dropout and norms never change)."""
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    def encoder_for(self, modality: str) -> tuple[str, nn.Module]:
        """(key, module) of the encoder `modality` is routed to."""
        if modality not in self.routes:
            raise ValueError(f"no route for modality {modality!r}; routed: {sorted(self.routes)}")
        key = self.routes[modality][0]
        return key, self.encoders[key]

    # ------------------------------------------------------------------------------------------- media -> tokens

    def encode_media(self, modality: str, media: Tensor) -> Tensor:
        """Steps 1-3 for N blocks of one modality: encode every item in one call, connect, project.

        Args:
            modality: image, video or audio.
            media: image (N, 3, H, W), video (N, T, 3, H, W), audio (N, S, T_fbank, F).

        Returns:
            (N, Q, D_llm) soft tokens, in the LLM's dtype.
        """
        items = media.unsqueeze(1) if modality == "image" else media  # (N, S, ...), as `config.split_items`
        features = self.tower_features(modality, items.flatten(0, 1))  # (N*S, L, D)
        return self.encode_features(modality, features.unflatten(0, items.shape[:2]))

    def tower_features(self, modality: str, items: Tensor) -> Tensor:
        """Step 1: the routed tower over a flat batch of items, (N, ...) -> (N, L, D), in the trainable dtype;
        what the feature cache stores. Frozen towers run in their own dtype, without a graph."""
        key, tower = self.encoder_for(modality)
        dtype = compute_dtype(tower)
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and f"encoders.{key}" not in self.frozen),
            torch.autocast(items.device.type, dtype=dtype, enabled=dtype != torch.float32),
        ):
            features = tower(items.to(dtype), modality)
        return features.to(self.llm_proj.weight.dtype)

    def encode_features(self, modality: str, features: Tensor) -> Tensor:
        """Steps 2-3 from tower outputs (N, S, L, D), computed now or read from the feature cache."""
        key, queries = self.routes[modality]
        memory = features.to(self.llm_proj.weight.dtype)  # (N, S, L, D)
        if key in self.adapters:
            memory = self.adapters[key](memory)  # (N, S, L, D_mem)
        tokens = self.connector(memory, queries)  # (N, Q, D_c)
        return self.llm_proj(tokens).to(self.llm.dtype)  # (N, Q, D_llm)

    def batch_soft_tokens(self, batch: ChatBridgeBatch) -> dict[str, Tensor]:
        """Soft tokens of every modality of a batch, from media or from cached features."""
        soft = {modality: self.encode_media(modality, media) for modality, media in batch.media.items()}
        soft |= {modality: self.encode_features(modality, features) for modality, features in batch.features.items()}
        return soft

    # ------------------------------------------------------------------------------------------- tokens -> loss

    def embed(self, input_ids: Tensor, soft_tokens: Mapping[str, Tensor], positions: Mapping[str, Tensor]) -> Tensor:
        """Step 4: text embeddings (added tokens' rows from `token_rows`) with every slot replaced by its soft token.

        Args:
            input_ids: (B, L) token ids.
            soft_tokens: modality -> (N, Q, D_llm) soft tokens of that modality's N blocks.
            positions: modality -> (N, Q) flat indices into B * L, in the same block order.

        Returns:
            (B, L, D_llm) input embeddings.
        """
        text = self.llm.get_input_embeddings()(input_ids)  # (B, L, D)
        if self.token_rows is not None:
            text = self.token_rows(input_ids, text)
        kept = last_medium_of_each_row(positions, input_ids.shape) if self.splice_last_medium_only else {}
        flat = text.flatten(0, 1)  # (B*L, D)
        for modality, soft in soft_tokens.items():  # soft: (N, Q, D)
            slots = positions[modality]  # (N, Q)
            if slots.shape != soft.shape[:2]:
                raise ValueError(
                    f"{modality}: the batch reserves {tuple(slots.shape)} soft-token slots but the model made "
                    f"{tuple(soft.shape[:2])} tokens; the data config and model.connector disagree"
                )
            if modality in kept:
                slots, soft = slots[kept[modality]], soft[kept[modality]]
            flat = flat.index_copy(0, slots.flatten(), soft.flatten(0, 1).to(flat.dtype))
        return flat.view_as(text)

    def forward(self, batch: ChatBridgeBatch) -> ChatBridgeOutput:
        """Steps 1-5: embed with soft tokens, run the LLM without a cache, cross-entropy at supervised positions."""
        embeds = self.embed(batch.input_ids, self.batch_soft_tokens(batch), batch.soft_token_positions)
        return self.loss_from_embeds(embeds, batch)

    def loss_from_embeds(self, embeds: Tensor, batch: ChatBridgeBatch) -> ChatBridgeOutput:
        """Step 5: the LLM over input embeddings (B, L, D) and the loss at `batch.labels`' supervised positions."""
        # Positions count real tokens only, so left padding does not move them (as Hugging Face generation does);
        # a padded batch computes exactly what each sample computes alone.
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        # The last column predicts nothing, and under causal attention no other position sees it: the LLM runs on
        # the first L-1 columns only, which leaves every supervised logit unchanged.
        hidden = self.llm.get_decoder()(
            inputs_embeds=embeds[:, :-1],
            attention_mask=batch.attention_mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=False,
        ).last_hidden_state  # (B, L-1, D)
        targets = batch.labels[:, 1:]  # position t predicts token t + 1
        supervised = targets != IGNORE_INDEX  # (B, L-1)
        # Boolean-mask indexing gathers the K supervised rows into a contiguous (K, D) tensor before the LM head
        # (a strided view would make a bf16 linear on CPU about 20x slower), so vocabulary-wide logits exist for
        # supervised positions only, and for a chunk of them at a time.
        token_losses = token_cross_entropy(hidden[supervised], self.llm.get_output_embeddings(), targets[supervised])
        count = len(token_losses)  # K
        rows = supervised.nonzero()[:, 0]  # (K,) sample of each supervised token
        per_sample_sum = token_losses.new_zeros(len(targets)).index_add(0, rows, token_losses)
        per_sample = per_sample_sum / supervised.sum(-1).clamp(min=1)
        loss = token_losses.sum() / max(count, 1)
        return ChatBridgeOutput(
            loss=loss, per_sample_loss=per_sample, token_losses=token_losses, num_supervised_tokens=count
        )


def last_medium_of_each_row(positions: Mapping[str, Tensor], shape: torch.Size) -> dict[str, Tensor]:
    """modality -> (N,) True for the blocks that are the last medium of their row, in a (B, L) batch."""
    starts = {modality: slots[:, 0] for modality, slots in positions.items()}  # (N,) first slot of each block
    if not starts:
        return {}
    last = next(iter(starts.values())).new_full((shape[0],), -1)
    for start in starts.values():
        last = last.scatter_reduce(0, start // shape[1], start, "amax")
    return {modality: start == last[start // shape[1]] for modality, start in starts.items()}


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a tower computes in: that of its matrix weights (norms and embeddings may stay fp32)."""
    for part in module.modules():
        if isinstance(part, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return part.weight.dtype
    return next(module.parameters()).dtype


def frozen_parts(cfg: ModelConfig) -> list[str]:
    """Module names of the parts the config declares frozen."""
    parts = [f"encoders.{key}" for key, encoder in cfg.encoders.items() if encoder.frozen]
    return parts + (["llm"] if cfg.llm.frozen else [])


def query_sets(cfg: ModelConfig) -> list[str]:
    """The connector's query sets, in order of first use by a route (image before audio in ChatBridge)."""
    return list(dict.fromkeys(route.queries for route in cfg.routes.values() if route.queries is not None))


def assemble_chatbridge(cfg: ModelConfig, llm: nn.Module) -> ChatBridgeModel:
    """Build every part but the LLM from the config, with random weights and no file I/O (works on meta)."""
    if not cfg.encoders or not cfg.routes:
        raise ValueError("model.encoders and model.routes are empty: choose a model preset (model.model_type)")
    encoders = {key: ENCODERS.get(encoder.name)(encoder) for key, encoder in cfg.encoders.items()}
    memory_encoder = cfg.memory_width_encoder()
    connector = CONNECTORS.get(cfg.connector.name)(cfg.connector, encoders[memory_encoder].width, query_sets(cfg))
    token_rows = token_rows_from_llm(llm, cfg.llm.added_tokens, cfg.llm.token_rows) if cfg.llm.token_rows else None
    return ChatBridgeModel(
        encoders,
        cfg.routes,
        memory_encoder,
        connector,
        llm,
        frozen_parts(cfg),
        token_rows,
        splice_last_medium_only=cfg.faithful.splice_last_medium_only,
    )


@MODELS.register("chatbind")  # the same model with ChatBind's parts: docs/reference/chatbind.md §1
@MODELS.register("chatbridge")
def build_chatbridge(cfg: ModelConfig) -> ChatBridgeModel:
    """The model with the LLM loaded from its folder and random weights elsewhere; see `loading.load_pretrained`."""
    with torch.random.fork_rng():
        llm, _tokenizer = LLMS.get(cfg.llm.name)(cfg.llm)
    # The parts' random init depends on `init_seed` only: random frozen towers are not saved in checkpoints, so the
    # same seed must rebuild them exactly, whatever ran before.
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        return assemble_chatbridge(cfg, llm)
