"""The `item_mean` connector: a media block's items averaged into one set of tokens (ChatBind's clip averaging).

See docs/reference/chatbind.md §2.2.2-2.2.3. ImageBind embeds every clip of a video (5 temporal x 3 spatial) and of
an audio track (3) separately; the reference averages those embeddings inside its encoder, without re-normalising,
so a video's vector is shorter than an image's (||f|| ~ 0.98 instead of 1) and an audio vector shorter than 20,
by however much its clips disagree. Our encoders stay per item and the model hands the connector a block's items,
`(N, S, L, D)`; this connector averages over S. By default the mean is rescaled to the items' mean norm, which
undoes exactly that shrinkage (an image, S = 1, is unchanged; audio keeps ImageBind's x20 scale); `renormalize:
false` is the reference's plain mean. The model's `llm_proj` after it is ChatBind's `mm_projector` (§2.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from chatbridge.config import ConnectorConfig
from chatbridge.registry import CONNECTORS


@dataclass
class ItemMeanConfig(ConnectorConfig):
    """Mean over a block's items; L tokens per item in, L tokens per block out (ChatBind: L = 1)."""

    name: str = "item_mean"
    renormalize: bool = True
    """Rescale each mean token to the mean norm of the tokens it averages; False: the reference's plain mean."""

    def output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        return tokens_per_item

    def output_width(self, memory_width: int) -> int:
        return memory_width


class ItemMean(nn.Module):
    """`(N, S, L, D)` -> `(N, L, D)`: the mean over the S items of each block, optionally rescaled."""

    def __init__(self, memory_width: int, renormalize: bool) -> None:
        super().__init__()
        self.output_width = memory_width
        self.renormalize = renormalize

    def forward(self, memory: Tensor, query_set: str | None) -> Tensor:
        mean = memory.mean(dim=1)  # (N, L, D)
        if not self.renormalize:
            return mean
        items_norm = memory.norm(dim=-1).mean(dim=1, keepdim=True).transpose(1, 2)  # (N, L, 1)
        return mean * (items_norm / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12))


@CONNECTORS.register("item_mean")
def build_item_mean(cfg: ItemMeanConfig, memory_width: int, query_sets: Sequence[str]) -> ItemMean:
    """ChatBind's clip averaging (with `llm_proj`, its `mm_projector`)."""
    return ItemMean(memory_width, cfg.renormalize)
