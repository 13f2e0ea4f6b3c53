"""Connectors without queries: every encoder token (LLaVA-1, LLaVA-1.5) or their mean over a block's items.

The model's `llm_proj` follows every connector, so "linear" here plus `llm_proj` is LLaVA-1's projector, and
"mlp" plus `llm_proj` is LLaVA-1.5's `mlp2x_gelu` (set `hidden_size` to the LLM width to reproduce it exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from chatbridge.config import ConnectorConfig
from chatbridge.registry import CONNECTORS


@dataclass
class LinearConfig(ConnectorConfig):
    """All S*L memory tokens pass to `llm_proj` unchanged."""

    name: str = "linear"

    def output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        return num_items * tokens_per_item

    def output_width(self, memory_width: int) -> int:
        return memory_width


@dataclass
class MLPConfig(LinearConfig):
    """Linear + GELU per token."""

    name: str = "mlp"
    hidden_size: int = 4096
    """Width of the hidden layer (the connector's output width)."""

    def output_width(self, memory_width: int) -> int:
        return self.hidden_size


class LinearConnector(nn.Module):
    """`(B, S, L, D_mem)` -> `(B, S*L, D_mem)`: no resampling; `llm_proj` is the projector."""

    def __init__(self, memory_width: int) -> None:
        super().__init__()
        self.output_width = memory_width

    def forward(self, memory: Tensor, query_set: str | None) -> Tensor:
        return memory.flatten(1, 2)


class MLPConnector(nn.Module):
    """`(B, S, L, D_mem)` -> `(B, S*L, hidden_size)` through Linear + GELU."""

    def __init__(self, memory_width: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(memory_width, hidden_size), nn.GELU())
        self.output_width = hidden_size

    def forward(self, memory: Tensor, query_set: str | None) -> Tensor:
        return self.proj(memory.flatten(1, 2))


@CONNECTORS.register("linear")
def build_linear_connector(cfg: LinearConfig, memory_width: int, query_sets: Sequence[str]) -> LinearConnector:
    """Identity connector (LLaVA-1 with `llm_proj`)."""
    return LinearConnector(memory_width)


@CONNECTORS.register("mlp")
def build_mlp_connector(cfg: MLPConfig, memory_width: int, query_sets: Sequence[str]) -> MLPConnector:
    """Linear + GELU connector (LLaVA-1.5 with `llm_proj`)."""
    return MLPConnector(memory_width, cfg.hidden_size)
