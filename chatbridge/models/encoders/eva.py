"""EVA-ViT-g image encoder on timm's `Eva`, numerically equal to LAVIS's `eva_vit.py`.

See docs/reference/chatbridge.md §1.2, §1.3 and §3.3.

ChatBridge (like BLIP-2) feeds the Q-Former with every token of the *penultimate* EVA-CLIP-g block: 39 of 40 blocks,
no final norm, no pooling, then a separate `ln_vision` LayerNorm (eps 1e-5, computed in fp32) whose weights come
from the BLIP-2 checkpoint. We reuse timm's maintained `Eva` instead of vendoring LAVIS's copy of BEiT; the tests
check it against an independent re-implementation of the LAVIS block.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import Tensor, nn

from chatbridge.config import EncoderConfig
from chatbridge.errors import UserError, load_torch_file
from chatbridge.models.layers import Fp32LayerNorm
from chatbridge.registry import ENCODERS

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class EvaViTConfig(EncoderConfig):
    """EVA-ViT (timm's Eva) + `ln_vision`; defaults are EVA-ViT-g as BLIP-2 and ChatBridge use it."""

    name: str = "eva_vit_g"
    checkpoint: str | None = field(
        default=None, metadata={"path": "the LAVIS EVA-ViT-g weights `eva_vit_g.pth` (a raw state dict)"}
    )
    image_size: int = 224
    """Input resolution; the position embedding of a checkpoint is interpolated to it."""
    patch_size: int = 14
    """Patch size in pixels."""
    width: int = 1408
    """Token width (D_v)."""
    depth: int = 39
    """Blocks kept: EVA-CLIP-g has 40, ChatBridge uses the penultimate layer's output."""
    num_heads: int = 16
    """Attention heads."""
    mlp_ratio: float = 4.3637
    """MLP hidden = int(width * mlp_ratio) (6144 for EVA-g)."""
    layer_norm_eps: float = 1e-6
    """Eps of the blocks' LayerNorms."""
    ln_vision_eps: float = 1e-5
    """Eps of `ln_vision` (LAVIS uses the PyTorch default, not the ViT's 1e-6)."""
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    """Pixel normalisation mean it was trained with (CLIP's)."""
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    """Pixel normalisation std."""

    def output_width(self) -> int:
        return self.width

    def num_tokens(self, modality: str, item_shape: tuple[int, ...]) -> int:
        """1 CLS token + one per patch of a (3, H, W) image or frame."""
        return 1 + (item_shape[-2] // self.patch_size) * (item_shape[-1] // self.patch_size)

    def preprocessing(self, modality: str) -> dict[str, Any]:
        """Square resize to the built resolution, CLIP statistics; frames of a video like images."""
        processor = {"image": ("image_processor", "clip_image"), "video": ("video_processor", "video_frames")}
        if modality not in processor:
            raise UserError(f"eva_vit_g encodes images and video frames, not {modality!r}")
        key, name = processor[modality]
        return {key: name, "image_size": self.image_size, "mean": self.mean, "std": self.std}


class EvaViT(nn.Module):
    """EVA backbone (all tokens of its last block, no final norm) followed by `ln_vision`.

    Attributes:
        backbone: timm `Eva` built without final norm, pooling or head.
        ln_vision: BLIP-2's LayerNorm over the backbone tokens.
        width: token width D_v.
    """

    def __init__(self, backbone: Eva, ln_vision_eps: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.width: int = backbone.embed_dim
        self.ln_vision = Fp32LayerNorm(self.width, eps=ln_vision_eps)

    def forward(self, pixels: Tensor, modality: str = "image") -> Tensor:
        """Encode normalized images or frames (N, 3, H, W) at the built resolution into (N, 1 + patches, width)."""
        # 1. Patch embedding, CLS token, absolute position embedding, the kept blocks. timm's final `norm` and
        #    `norm_pre` are Identity in this configuration (see `build_eva_vit_g`), so this is the raw last block.
        tokens = self.backbone.forward_features(pixels)  # (N, 1 + H/p * W/p, D)
        # 2. BLIP-2's ln_vision.
        return self.ln_vision(tokens)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """The LAVIS `eva_vit_g.pth` into the backbone (`ln_vision` comes from the BLIP-2 checkpoint)."""
        load_eva_checkpoint(self, path)


@ENCODERS.register("eva_vit_g")
def build_eva_vit_g(cfg: EvaViTConfig) -> EvaViT:
    """Build EVA-ViT-g (or a tiny variant) with random weights; load them with `load_eva_checkpoint`.

    Every flag that differs from timm's defaults or from EVA-02 is spelled out: LAVIS's EVA is BEiT-style with an
    exact-GELU MLP, fused qkv with separate q/v biases (zero k bias), absolute position embedding including the CLS
    row, no RoPE, no layer-scale, no final norm. No file or network I/O, so it also builds on the meta device.
    """
    backbone = Eva(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        global_pool="",
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        qkv_bias=True,
        qkv_fused=True,
        mlp_ratio=cfg.mlp_ratio,
        swiglu_mlp=False,
        scale_mlp=False,
        scale_attn_inner=False,
        norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
        init_values=None,
        class_token=True,
        use_abs_pos_emb=True,
        use_rot_pos_emb=False,
        use_post_transformer_norm=False,
        use_fc_norm=False,
    )
    return EvaViT(backbone, ln_vision_eps=cfg.ln_vision_eps)


def load_eva_checkpoint(encoder: EvaViT, path: str | os.PathLike) -> None:
    """Load LAVIS EVA weights (a raw state dict or `{"model": state_dict}`) into `encoder.backbone`.

    Blocks with an index >= the encoder's depth are dropped on purpose: `eva_vit_g.pth` holds all 40 EVA-CLIP-g
    blocks and ChatBridge/BLIP-2 keep 39, so `blocks.39.*` is expected and ignored (LAVIS did this implicitly
    with a non-strict load). The patch part of `pos_embed` is bicubically resized if the grid differs, keeping the
    CLS row. Every other missing or unexpected key raises. `ln_vision` is not in this file (it comes from BLIP-2).
    LAVIS's key names are timm's (both descend from BEiT: `attn.qkv.weight`, `attn.q_bias`, `attn.v_bias`, ...;
    timm's zero `k_bias` is a non-persistent buffer), so no renaming is needed; the tests compare the key sets.

    Raises:
        ValueError: the file's keys or shapes do not match the backbone, or the encoder is on the meta device.
    """
    backbone = encoder.backbone
    if any(param.is_meta for param in backbone.parameters()):
        raise UserError(f"cannot load {path} into meta tensors; call encoder.to_empty(device=...) first")
    state_dict = load_torch_file(path, "model.encoders.<vision>.checkpoint (EVA)")
    if isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]
    state_dict = _drop_blocks_from(state_dict, len(backbone.blocks))
    if "pos_embed" in state_dict:
        state_dict["pos_embed"] = _resize_pos_embed(state_dict["pos_embed"], backbone, path)
    expected = set(backbone.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise UserError(f"EVA checkpoint {path} does not match the encoder: missing {missing}, unexpected {unexpected}")
    try:
        backbone.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # shape mismatches: same keys, different architecture
        raise UserError(f"EVA checkpoint {path} does not fit the encoder: {error}") from error
    # to_empty() leaves non-persistent buffers (the zero k bias) uninitialized and no checkpoint restores them.
    for module in backbone.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()


def _drop_blocks_from(state_dict: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Remove `blocks.N.*` entries with N >= depth (the unused last EVA-CLIP-g block)."""
    kept = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match is None or int(match.group(1)) < depth:
            kept[key] = value
    return kept


def _resize_pos_embed(pos_embed: Tensor, backbone: Eva, path: str | os.PathLike) -> Tensor:
    """Resize a square checkpoint grid to the backbone's grid as LAVIS's `interpolate_pos_embed` does.

    Same arithmetic as LAVIS: fp32, bicubic, align_corners=False and no antialiasing (timm's default would
    antialias when shrinking); the prefix (CLS) row is copied unchanged.
    """
    prefix = backbone.num_prefix_tokens
    old_side = math.isqrt(pos_embed.shape[1] - prefix)
    if old_side * old_side != pos_embed.shape[1] - prefix:
        raise UserError(f"pos_embed {tuple(pos_embed.shape)} in {path} is not a CLS row plus a square grid")
    return resample_abs_pos_embed(
        pos_embed.float(),
        new_size=list(backbone.patch_embed.grid_size),
        old_size=[old_side, old_side],
        num_prefix_tokens=prefix,
        interpolation="bicubic",
        antialias=False,
    )
