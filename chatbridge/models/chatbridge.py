"""ChatBridge: frozen encoders -> one shared perceiver -> projection -> soft tokens spliced into a frozen LLM.

Method, per sample (spec 1.1): every image, video frame and audio segment is encoded by a frozen tower; the
features of one media block (all frames of a video, all segments of a clip) are concatenated into one memory; the
perceiver turns that memory into a fixed number of tokens with the modality's learnable queries; `llm_proj` maps them
to the LLM width; they replace the placeholder positions of the text that the data pipeline prepared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatbridge.config import ModelConfig
from chatbridge.registry import CONNECTORS, ENCODERS, MODELS

IGNORE_INDEX = -100

# modality -> (encoder attribute, perceiver query set). Videos are frames for the image tower and share the image
# queries (spec 1.1); audio has its own queries.
ROUTES: dict[str, tuple[str, str]] = {
    "image": ("image_encoder", "image"),
    "video": ("image_encoder", "image"),
    "audio": ("audio_encoder", "audio"),
}


@dataclass
class ChatBridgeBatch:
    """What the collate hands the model: tensors only.

    Attributes:
        input_ids: (B, L) token ids; placeholder slots hold any valid id (they are overwritten by soft tokens).
        attention_mask: (B, L) 1 for real positions, 0 for padding.
        labels: (B, L) target ids, IGNORE_INDEX where not supervised; label t is predicted at position t - 1.
        media: modality -> stacked blocks of that modality over the whole batch, in placeholder order:
            image (N, 3, H, W), video (N, T, 3, H, W), audio (N, S, T_fbank, F).
        query_positions: modality -> (N, Q) flat indices into B * L where block i's Q soft tokens go.
        features: modality -> (N, S, L, D) precomputed outputs of the modality's frozen tower (the feature
            cache), used instead of `media` for that modality.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    media: dict[str, Tensor]
    query_positions: dict[str, Tensor]
    features: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ChatBridgeBatch:
        """The same batch on `device`."""
        return ChatBridgeBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            media={name: value.to(device) for name, value in self.media.items()},
            query_positions={name: value.to(device) for name, value in self.query_positions.items()},
            features={name: value.to(device) for name, value in self.features.items()},
        )


@dataclass
class ChatBridgeOutput:
    """Attributes:
    loss: scalar, mean cross-entropy over every supervised token of the batch (0 if there is none).
    logits: (K, V) logits at the K supervised positions only; full-vocabulary logits for every position are
        never materialised.
    num_supervised_tokens: K.
    """

    loss: Tensor
    logits: Tensor
    num_supervised_tokens: int


class ChatBridgeModel(nn.Module):
    """The assembled model; parts are built by their registered builders and passed in (composition)."""

    def __init__(
        self,
        image_encoder: nn.Module,
        audio_encoder: nn.Module,
        perceiver: nn.Module,
        llm: nn.Module,
        frozen_towers: Sequence[str] = ("image_encoder", "audio_encoder", "llm"),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.audio_encoder = audio_encoder
        # `audio_trans` in the reference: maps audio features to the image width, so that the one Q-Former's
        # cross-attention (whose K/V take image-width inputs) serves both modalities.
        self.audio_adapter = nn.Linear(audio_encoder.width, image_encoder.width)
        self.perceiver = perceiver
        self.llm_proj = nn.Linear(perceiver.output_width, llm.config.hidden_size)
        self.llm = llm
        self.frozen_towers = tuple(frozen_towers)

    def train(self, mode: bool = True) -> ChatBridgeModel:
        """Frozen towers stay in eval mode whatever the caller asks (dropout and norms of frozen parts never change)."""
        super().train(mode)
        for name in self.frozen_towers:
            getattr(self, name).eval()
        return self

    def encode(self, modality: str, media: Tensor) -> Tensor:
        """Steps 1-3 for all blocks of one modality: encode every frame/segment in one call, perceive, project.

        Args:
            modality: image, video or audio.
            media: image (N, 3, H, W), video (N, T, 3, H, W) or audio (N, S, T_fbank, F).

        Returns:
            (N, Q, D_llm) soft tokens, in the LLM's dtype.
        """
        items = media.unsqueeze(1) if modality == "image" else media  # (N, S, ...)
        features = self.tower_features(modality, items.flatten(0, 1))  # (N*S, L, D)
        return self.encode_features(modality, features.unflatten(0, items.shape[:2]))

    def tower_features(self, modality: str, items: Tensor) -> Tensor:
        """Step 1: the modality's tower over a flat batch of frames/segments, (N, ...) -> (N, L, D), in the
        trainable dtype; what the feature cache stores. Frozen towers run in their own dtype, without a graph."""
        name = ROUTES[modality][0]
        tower = getattr(self, name)
        tower_dtype = next(tower.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and name not in self.frozen_towers):
            features = tower(items.to(tower_dtype))
        return features.to(self.llm_proj.weight.dtype)

    def encode_features(self, modality: str, features: Tensor) -> Tensor:
        """Steps 2-3 from tower outputs (N, S, L, D), computed now or read from the feature cache."""
        memory = features.to(self.llm_proj.weight.dtype)  # (N, S, L, D)
        if modality == "audio":
            memory = self.audio_adapter(memory)  # (N, S, L, D_v)
        queries = self.perceiver(memory, ROUTES[modality][1])  # (N, Q, D_q)
        return self.llm_proj(queries).to(self.llm.dtype)  # (N, Q, D_llm)

    def embed(self, batch: ChatBridgeBatch) -> Tensor:
        """Step 4: text embeddings with every placeholder slot replaced by its soft token. (B, L, D_llm)."""
        text = self.llm.get_input_embeddings()(batch.input_ids)  # (B, L, D)
        flat = text.flatten(0, 1)  # (B*L, D)
        blocks = [(m, self.encode(m, media)) for m, media in batch.media.items()]
        blocks += [(m, self.encode_features(m, features)) for m, features in batch.features.items()]
        for modality, soft in blocks:  # soft: (N, Q, D)
            positions = batch.query_positions[modality]  # (N, Q)
            if positions.shape != soft.shape[:2]:
                raise ValueError(
                    f"{modality}: the batch reserves {tuple(positions.shape)} placeholder slots but the perceiver "
                    f"made {tuple(soft.shape[:2])} tokens; the collate and model.perceiver disagree"
                )
            flat = flat.index_copy(0, positions.flatten(), soft.flatten(0, 1))
        return flat.view_as(text)

    def forward(self, batch: ChatBridgeBatch) -> ChatBridgeOutput:
        """Steps 1-5: embed with soft tokens, run the LLM, cross-entropy at supervised positions only."""
        embeds = self.embed(batch)
        # Positions count real tokens only, so left padding does not move them (as Hugging Face generation does);
        # this makes a padded batch compute exactly what each sample computes alone.
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions
        ).last_hidden_state  # (B, L, D)
        targets = batch.labels[:, 1:]  # position t predicts token t + 1
        supervised = targets != IGNORE_INDEX  # (B, L-1)
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][supervised]).float()  # (K, V)
        count = int(supervised.sum())
        loss = F.cross_entropy(logits, targets[supervised], reduction="sum") / max(count, 1)
        return ChatBridgeOutput(loss=loss, logits=logits, num_supervised_tokens=count)


def frozen_tower_names(cfg: ModelConfig) -> list[str]:
    """Towers declared frozen by the config; they stay in eval mode and run without gradients."""
    flags = {"image_encoder": cfg.vision.frozen, "audio_encoder": cfg.audio.frozen, "llm": cfg.llm.frozen}
    return [name for name, frozen in flags.items() if frozen]


def assemble_chatbridge(cfg: ModelConfig, llm: nn.Module) -> ChatBridgeModel:
    """Build every part but the LLM from the config, with random weights and no file I/O (works on meta)."""
    image_encoder = ENCODERS.get(cfg.vision.name)(cfg.vision)
    audio_encoder = ENCODERS.get(cfg.audio.name)(cfg.audio)
    perceiver = CONNECTORS.get(cfg.perceiver.name)(cfg.perceiver, memory_width=image_encoder.width)
    return ChatBridgeModel(image_encoder, audio_encoder, perceiver, llm, frozen_tower_names(cfg))


@MODELS.register("chatbridge")
def build_chatbridge(cfg: ModelConfig) -> ChatBridgeModel:
    """The model with the LLM loaded from its folder and random weights elsewhere; see `loading.load_pretrained`."""
    from chatbridge.registry import LLMS

    with torch.random.fork_rng():
        llm, _tokenizer = LLMS.get(cfg.llm.name)(cfg.llm)
    # The parts' random init depends on `init_seed` only: random frozen towers (tiny presets) are not saved in
    # checkpoints, so the same seed must rebuild them exactly, whatever ran before.
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        return assemble_chatbridge(cfg, llm)


def supervised_token_count(batch: ChatBridgeBatch) -> int:
    """Tokens that carry a loss (labels are predicted one position earlier, so column 0 never does)."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
