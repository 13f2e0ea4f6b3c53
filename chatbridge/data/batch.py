"""The contract between the data pipeline and the model: one batch type, tensors only.

The data layer fills it (tokenisation, padding and soft-token positions happen in data workers); the model reads
it and never tokenises, pads or parses strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label of positions without loss (PyTorch cross-entropy's default `ignore_index`)."""


@dataclass
class ChatBridgeBatch:
    """B samples of length L, left-padded, with M media blocks in total.

    Attributes:
        input_ids: (B, L) token ids; soft-token slots hold any valid id (their embeddings are overwritten).
        attention_mask: (B, L) 1 for real positions, 0 for padding.
        labels: (B, L) target ids, IGNORE_INDEX where not supervised; label t is predicted at position t - 1.
        media: modality -> the preprocessed blocks of that modality in batch order (sample, then placeholder):
            image (N, 3, H, W), video (N, T, 3, H, W), audio (N, S, T_fbank, F).
        features: modality -> (N, S, L, D) cached outputs of the modality's frozen encoder, for modalities read
            from the feature cache instead of `media`. A modality is in `media` or in `features`, never both.
        soft_token_positions: modality -> (N, Q) flat indices into the row-major (B * L) sequence where block i's
            Q soft tokens go, in the order of that modality's blocks.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    media: dict[str, Tensor] = field(default_factory=dict)
    features: dict[str, Tensor] = field(default_factory=dict)
    soft_token_positions: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ChatBridgeBatch:
        """The same batch on `device`."""
        return ChatBridgeBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            media={name: value.to(device) for name, value in self.media.items()},
            features={name: value.to(device) for name, value in self.features.items()},
            soft_token_positions={name: value.to(device) for name, value in self.soft_token_positions.items()},
        )

    @property
    def num_supervised_tokens(self) -> int:
        """Tokens that carry a loss (labels are predicted one position earlier, so column 0 never does)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())
