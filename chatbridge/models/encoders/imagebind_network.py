"""The two ImageBind trunks ChatBind uses (vision, audio), built from torch and timm parts.

See docs/reference/chatbind.md §2.2.1. Each trunk is a stem that cuts the input into patch tokens, a learned CLS
token and position embedding, pre-norm transformer blocks, and a head that keeps the CLS token, projects it to the
joint embedding width and L2-normalises it (audio then multiplies by a fixed logit scale, 20).

Why assembled here rather than taken whole from a library: no maintained package ships ImageBind without
pytorchvideo and pre-2.x torchvision (the PyPI `imagebind*` wheels pin torch 1.13, pytorchvideo 0.1.5 or depend on
both). timm's `Block` cannot add ImageBind's learned extra key/value position (`add_bias_kv`, audio trunk), but
torch's `nn.MultiheadAttention` implements exactly that attention under exactly the checkpoint's parameter names
(`in_proj_weight`, `bias_k`, ...), so a block here is torch's attention plus timm's `Mlp` and `DropPath`, and the
only hand-written code is the wiring. Module names follow the checkpoint where that costs nothing (`norm_1`,
`attn`, `mlp.fc1`), so the key map in `imagebind.py` only renames the stem, position and head entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-6
"""Eps of every block, pre-trunk and head LayerNorm (the audio stem's LayerNorm keeps torch's 1e-5)."""
MLP_RATIO = 4
"""MLP hidden width / token width in every ImageBind trunk."""
MAX_LOGIT_SCALE = 100.0
"""`LearnableLogitScaling` clips exp(log scale) at this value."""


class Block(nn.Module):
    """Pre-norm transformer block (ImageBind's `BlockWithMasking` without mask or layer scale).

    `x + DropPath(Attention(LN(x)))`, then `x + DropPath(MLP(LN(x)))`, with exact-GELU MLP. One `DropPath` module
    serves both residual branches, as upstream (two independent draws per forward in train mode).
    """

    def __init__(self, width: int, num_heads: int, add_bias_kv: bool, drop_path: float) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = nn.MultiheadAttention(width, num_heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(width, MLP_RATIO * width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class PatchStem(nn.Module):
    """Input -> (N, patches, width) tokens: a bias-free convolution, then an optional LayerNorm over the tokens.

    The vision stem is a Conv3d over (frames, patch, patch) tubelets; an image (N, 3, H, W) first becomes a clip by
    repeating it `image_frames` times (upstream's `PadIm2Video(pad_type="repeat")`). The audio stem is a Conv2d
    over the (1, mel, frames) spectrogram followed by a LayerNorm.
    """

    def __init__(self, proj: nn.Conv2d | nn.Conv3d, norm: nn.Module | None = None, image_frames: int = 0) -> None:
        super().__init__()
        self.proj = proj
        self.norm = norm if norm is not None else nn.Identity()
        self.image_frames = image_frames

    def forward(self, x: Tensor) -> Tensor:
        if self.image_frames and x.ndim == 4:  # an image (N, C, H, W) -> a still clip (N, C, T, H, W)
            x = x.unsqueeze(2).expand(-1, -1, self.image_frames, -1, -1)
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Trunk(nn.Module):
    """One modality branch, input to its joint embedding: (N, *item) -> (N, embed_dim).

    Args:
        stem: Patch tokens of an input.
        num_patches: Tokens the stem makes (the position embedding has one more, for CLS).
        width: Token width.
        depth: Blocks.
        num_heads: Attention heads.
        embed_dim: Joint embedding width (1024).
        pre_norm: A LayerNorm before the blocks (vision only).
        add_bias_kv: Attention gets a learned extra key and value (audio only).
        drop_path: Stochastic depth of the last block; block i gets `drop_path * i / (depth - 1)` (upstream's
            linspace), which acts only in train mode.
        logit_scale: Fixed factor after the L2 normalisation (audio: 20), None for none (vision).
    """

    def __init__(  # noqa: PLR0913 - the trunk's hyper-parameters, one argument each
        self,
        stem: PatchStem,
        num_patches: int,
        width: int,
        depth: int,
        num_heads: int,
        embed_dim: int,
        pre_norm: bool = False,
        add_bias_kv: bool = False,
        drop_path: float = 0.0,
        logit_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, width))
        self.pre_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS) if pre_norm else nn.Identity()
        rates = [drop_path * index / max(depth - 1, 1) for index in range(depth)]
        self.blocks = nn.ModuleList(Block(width, num_heads, add_bias_kv, rate) for rate in rates)
        self.head_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head_proj = nn.Linear(width, embed_dim, bias=False)
        if logit_scale is not None:
            self.register_buffer("log_logit_scale", torch.tensor(math.log(logit_scale)))
        else:
            self.log_logit_scale = None
        if not self.pos_embed.is_meta:
            trunc_normal_(self.cls_token, std=0.02)
            trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.stem(x)  # (N, P, D)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.pre_norm(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        # The head's LayerNorm acts per token, so normalising only the CLS token it keeps is the same computation.
        embedding = F.normalize(self.head_proj(self.head_norm(tokens[:, 0])), dim=-1)  # (N, E)
        if self.log_logit_scale is not None:
            embedding = embedding * self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return embedding


def vision_trunk(  # noqa: PLR0913 - the vision branch's hyper-parameters
    image_size: int, patch_size: int, frames: int, width: int, depth: int, num_heads: int, embed_dim: int
) -> Trunk:
    """ImageBind's vision branch: (frames, patch, patch) tubelets, pre-trunk LayerNorm, no drop-path."""
    tubelet = (frames, patch_size, patch_size)
    stem = PatchStem(nn.Conv3d(3, width, kernel_size=tubelet, stride=tubelet, bias=False), image_frames=frames)
    return Trunk(stem, (image_size // patch_size) ** 2, width, depth, num_heads, embed_dim, pre_norm=True)


def audio_trunk(  # noqa: PLR0913 - the audio branch's hyper-parameters
    spectrogram: Sequence[int],
    kernel: int,
    stride: int,
    width: int,
    depth: int,
    num_heads: int,
    embed_dim: int,
    drop_path: float,
    logit_scale: float,
) -> Trunk:
    """ImageBind's audio branch over (mel bins, frames) spectrograms: overlapping patches (kernel > stride), a
    LayerNorm in the stem, extra attention key/value, drop-path, and the fixed logit scale."""
    stem = PatchStem(nn.Conv2d(1, width, kernel_size=kernel, stride=stride, bias=False), nn.LayerNorm(width))
    grid = [(size - kernel) // stride + 1 for size in spectrogram]
    return Trunk(
        stem,
        math.prod(grid),
        width,
        depth,
        num_heads,
        embed_dim,
        add_bias_kv=True,
        drop_path=drop_path,
        logit_scale=logit_scale,
    )
