"""BEATs audio transformer, hand-written: neither PyTorch, torchaudio, transformers nor timm ships it.

This is a port of the inference path of microsoft/unilm `beats/{BEATs,backbone,modules}.py` as ChatBridge uses it
(docs/reference/chatbridge.md §1.5, §3.4): the model receives an already normalized fbank, never a padding mask,
and has no predictor head.
Parameter names follow the upstream state dict so that official checkpoints load strictly; the only rename is
the positional convolution's weight norm, which uses the `torch.nn.utils.parametrizations` API
(`parametrizations.weight.original0/1` instead of `weight_g/weight_v`; `beats.py` remaps the keys).

Numerics follow upstream op for op, because the released ChatBridge weights were trained on top of them:
queries are scaled by head_dim**-0.5 and by 1/32, the logits get their row max subtracted and are multiplied by 32
again (an fp16 overflow guard), the relative position bias is gated per query (`grep_linear`, `grep_a`), and the
post-LN layers scale their residual by (2 * depth) ** 0.25 when `deep_norm` is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

# Upstream divides the scaled queries by this and multiplies the max-subtracted logits back (fp16 guard).
_LOGIT_ALPHA = 32


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """T5-style bidirectional buckets of `key - query` offsets, exactly as upstream `_relative_positions_bucket`.

    Half of the buckets hold positive offsets; within each half, offsets below a quarter of `num_buckets` get a
    bucket each and larger ones share log-spaced buckets up to `max_distance`.

    Returns:
        (length, length) int64 bucket ids.
    """
    positions = torch.arange(length, dtype=torch.long, device=device)
    relative = positions[None, :] - positions[:, None]  # (L, L): key - query
    half = num_buckets // 2
    buckets = (relative > 0).to(torch.long) * half
    distance = relative.abs()
    max_exact = half // 2
    is_small = distance < max_exact
    # Clamping only touches offsets that `is_small` discards; it avoids casting log(0) = -inf to an integer.
    large = distance.clamp(min=max_exact).float()
    if_large = max_exact + (torch.log(large / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)).to(
        torch.long
    )
    if_large = torch.minimum(if_large, torch.full_like(if_large, half - 1))
    return buckets + torch.where(is_small, distance, if_large)


class SamePad(nn.Module):
    """Drop the extra last frame that an even-kernel convolution with padding k//2 produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """Trim (N, C, L + remove) to (N, C, L)."""
        return x[:, :, : -self.remove] if self.remove > 0 else x


class BEATsAttention(nn.Module):
    """Multi-head self-attention with BEATs' gated relative position bias.

    Attributes:
        relative_attention_bias: (num_buckets, num_heads) table; upstream builds it in every layer and then
            replaces layers 1.. by layer 0's module, so the state dict repeats one tensor under every layer name.
            `BEATsEncoder` does the same sharing. Absent when relative positions are off.
        grep_linear, grep_a: the per-query gate of the position bias ("gru_rel_pos"); absent when it is off.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        relative_position_embedding: bool,
        num_buckets: int,
        max_distance: int,
        gru_rel_pos: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.scaling = self.head_dim**-0.5
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.gru_rel_pos = gru_rel_pos
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.dropout_module = nn.Dropout(dropout)
        if relative_position_embedding:
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def position_bias(self, length: int) -> Tensor:
        """The ungated relative position bias (num_heads, L, L), computed once and shared by all layers."""
        table = self.relative_attention_bias.weight
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance, table.device)
        return F.embedding(buckets, table).permute(2, 0, 1)

    def _gate(self, query: Tensor) -> Tensor:
        """Per-query gate (N, H, L, 1) of the position bias, from the unscaled queries (N, H, L, head_dim)."""
        N, H, L, _ = query.shape
        gates = torch.sigmoid(self.grep_linear(query).view(N, H, L, 2, 4).sum(-1))  # (N, H, L, 2)
        gate_a, gate_b = gates.chunk(2, dim=-1)
        return gate_a * (gate_b * self.grep_a - 1.0) + 2.0

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        """Attend over (N, L, width) tokens; `position_bias` is (H, L, L) or None."""
        N, L, C = x.shape
        H, D = self.num_heads, self.head_dim
        # Two separate multiplications, in upstream's order, so that fp16 rounding matches.
        q = self.q_proj(x) * self.scaling
        q = q * (1 / _LOGIT_ALPHA)
        q = q.view(N, L, H, D).transpose(1, 2)  # (N, H, L, D)
        k = self.k_proj(x).view(N, L, H, D).transpose(1, 2)
        v = self.v_proj(x).view(N, L, H, D).transpose(1, 2)
        logits = q @ k.transpose(-1, -2)  # (N, H, L, L)
        logits = (logits - logits.max(dim=-1, keepdim=True)[0]) * _LOGIT_ALPHA
        if position_bias is not None:
            if self.gru_rel_pos:
                # Upstream recovers the unscaled query by undoing both scalings (not by reusing q_proj's output).
                position_bias = self._gate(q * _LOGIT_ALPHA / self.scaling) * position_bias
            logits = logits + position_bias
        probs = F.softmax(logits, dim=-1).type_as(logits)
        out = self.dropout_module(probs) @ v  # (N, H, L, D)
        return self.out_proj(out.transpose(1, 2).reshape(N, L, C))


class BEATsLayer(nn.Module):
    """One transformer layer: post-LN (with optional deep-norm residual scaling) or pre-LN, GELU feed-forward."""

    def __init__(
        self,
        attention: BEATsAttention,
        width: int,
        ffn_dim: int,
        layer_norm_first: bool,
        deep_norm_alpha: float,
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = attention
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, width)
        self.final_layer_norm = nn.LayerNorm(width)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(activation_dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.deep_norm_alpha = deep_norm_alpha

    def _feed_forward(self, x: Tensor) -> Tensor:
        # Upstream's `gelu` runs in fp32 and casts back to fc1's output dtype (it matters under fp16 autocast).
        hidden = self.fc1(x)
        hidden = F.gelu(hidden.float()).type_as(hidden)
        return self.dropout3(self.fc2(self.dropout2(hidden)))

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        """Transform (N, L, width) tokens."""
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self._feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.deep_norm_alpha + self.dropout1(self.self_attn(x, position_bias)))
        return self.final_layer_norm(x * self.deep_norm_alpha + self._feed_forward(x))


class BEATsEncoder(nn.Module):
    """Convolutional position embedding, then the layers; the relative position bias is computed once by layer 0.

    Layer-drop is applied in training mode as upstream does; ChatBridge keeps the tower frozen in eval mode.
    """

    def __init__(
        self,
        layers: list[BEATsLayer],
        width: int,
        conv_pos: int,
        conv_pos_groups: int,
        layer_norm_first: bool,
        dropout: float = 0.0,
        layerdrop: float = 0.0,
    ) -> None:
        super().__init__()
        conv = nn.Conv1d(width, width, kernel_size=conv_pos, padding=conv_pos // 2, groups=conv_pos_groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4 / (conv_pos * width)))
        nn.init.zeros_(conv.bias)
        # Weight norm over dim 2 (the kernel axis): g has shape (1, 1, conv_pos), as in upstream.
        self.pos_conv = nn.Sequential(weight_norm(conv, name="weight", dim=2), SamePad(conv_pos), nn.GELU())
        self.layers = nn.ModuleList(layers)
        # Upstream replaces the tables of layers 1.. by layer 0's module: one tensor, repeated in the state dict.
        self.relative_position_embedding = hasattr(layers[0].self_attn, "relative_attention_bias")
        if self.relative_position_embedding:
            for layer in layers[1:]:
                layer.self_attn.relative_attention_bias = layers[0].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(width)
        self.layer_norm_first = layer_norm_first
        self.dropout = nn.Dropout(dropout)
        self.layerdrop = layerdrop

    def forward(self, x: Tensor) -> Tensor:
        """Encode (N, L, width) tokens into (N, L, width)."""
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = self.layers[0].self_attn.position_bias(x.shape[1]) if self.relative_position_embedding else None
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()).item() <= self.layerdrop:
                continue
            x = layer(x, position_bias)
        return self.layer_norm(x) if self.layer_norm_first else x


class BEATs(nn.Module):
    """BEATs on a precomputed fbank: patchify, LayerNorm, project to the encoder width, encode.

    The constructor takes flat hyper-parameters named after `BeatsConfig`; `beats.beats_kwargs_from_cfg` maps an
    official checkpoint's `cfg` onto them.
    """

    def __init__(  # noqa: PLR0913 - mirrors the upstream cfg one argument per field (no config objects here)
        self,
        *,
        patch_size: int = 16,
        embed_dim: int = 512,
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        relative_position_embedding: bool = True,
        num_buckets: int = 320,
        max_distance: int = 800,
        gru_rel_pos: bool = True,
        deep_norm: bool = True,
        layer_norm_first: bool = False,
        conv_bias: bool = False,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        dropout_input: float = 0.0,
        layerdrop: float = 0.0,
    ) -> None:
        super().__init__()
        if deep_norm and layer_norm_first:
            raise ValueError("deep_norm requires post-LN layers (layer_norm_first=False), as upstream asserts")
        self._architecture = {
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "width": width,
            "depth": depth,
            "num_heads": num_heads,
            "ffn_dim": ffn_dim,
            "conv_pos": conv_pos,
            "conv_pos_groups": conv_pos_groups,
            "relative_position_embedding": relative_position_embedding,
            "num_buckets": num_buckets,
            "max_distance": max_distance,
            "gru_rel_pos": gru_rel_pos,
            "deep_norm": deep_norm,
            "layer_norm_first": layer_norm_first,
            "conv_bias": conv_bias,
        }
        self.patch_size = patch_size
        self.width = width
        self.patch_embedding = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size, bias=conv_bias)
        self.layer_norm = nn.LayerNorm(embed_dim)
        # Upstream has no projection when the widths agree; Identity keeps that state-dict layout.
        self.post_extract_proj = nn.Linear(embed_dim, width) if embed_dim != width else nn.Identity()
        self.dropout_input = nn.Dropout(dropout_input)
        attentions = [
            BEATsAttention(
                width, num_heads, relative_position_embedding, num_buckets, max_distance, gru_rel_pos, attention_dropout
            )
            for _ in range(depth)
        ]
        alpha = (2 * depth) ** 0.25 if deep_norm else 1.0
        layers = [
            BEATsLayer(attention, width, ffn_dim, layer_norm_first, alpha, dropout, activation_dropout)
            for attention in attentions
        ]
        self.encoder = BEATsEncoder(layers, width, conv_pos, conv_pos_groups, layer_norm_first, dropout, layerdrop)
        _init_encoder(self.encoder, deep_norm)

    def architecture(self) -> dict[str, int | bool]:
        """The hyper-parameters that shape the network (dropouts excluded), keyed like the constructor."""
        return dict(self._architecture)

    def forward(self, fbank: Tensor) -> Tensor:
        """Encode a normalized fbank (N, T, F) into (N, T/p * F/p, width) tokens, time-major (t * F/p + f)."""
        features = self.patch_embedding(fbank.unsqueeze(1))  # (N, embed_dim, T/p, F/p)
        features = features.flatten(2).transpose(1, 2)  # (N, T/p * F/p, embed_dim)
        features = self.layer_norm(features)
        x = self.dropout_input(self.post_extract_proj(features))
        return self.encoder(x)


def _init_encoder(encoder: BEATsEncoder, deep_norm: bool) -> None:
    """Upstream's random init of the layers: BERT normal(0.02) and zero biases, then deep-norm Xavier gains.

    Written with `nn.init` so it also runs on the meta device (upstream's init round-trips through the CPU).
    """
    for module in encoder.layers.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    if not deep_norm:
        return
    beta = (8 * len(encoder.layers)) ** -0.25
    for layer in encoder.layers:
        gains = [(layer.self_attn.k_proj, 1.0), (layer.self_attn.v_proj, beta), (layer.self_attn.q_proj, 1.0)]
        gains += [(layer.self_attn.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)]
        for linear, gain in gains:
            nn.init.xavier_normal_(linear.weight, gain=gain)
