"""EVA-ViT-g on timm: shapes, parameter count, key layout, checkpoint loading and equality with LAVIS's maths."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import chatbridge.data.processors  # noqa: F401  (registers the processors)
from chatbridge.models.encoders.base import Encoder
from chatbridge.models.encoders.eva import (
    CLIP_MEAN,
    CLIP_STD,
    EvaViT,
    EvaViTConfig,
    build_eva_vit_g,
    load_eva_checkpoint,
)
from chatbridge.registry import ENCODERS, PROCESSORS
from tests.fixtures.eva import write_tiny_eva_checkpoint

TINY = EvaViTConfig(image_size=28, patch_size=14, width=32, depth=2, num_heads=4)


def tiny_encoder(image_size: int = 28) -> EvaViT:
    return build_eva_vit_g(replace(TINY, image_size=image_size)).eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, Tensor]]:
    path = tmp_path / "eva_vit_g.pth"
    return path, write_tiny_eva_checkpoint(path, depth=TINY.depth, extra_blocks=1)


def lavis_reference_forward(sd: dict[str, Tensor], pixels: Tensor, num_heads: int, depth: int) -> Tensor:
    """LAVIS `VisionTransformer.forward_features` (no final norm) written out on the raw LAVIS state dict."""
    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    B, N, C = x.shape
    for i in range(depth):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (C,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        bias = torch.cat([p["attn.q_bias"], torch.zeros_like(p["attn.v_bias"]), p["attn.v_bias"]])
        q, k, v = F.linear(h, p["attn.qkv.weight"], bias).reshape(B, N, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (C // num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), p["attn.proj.weight"], p["attn.proj.bias"])
        h = F.layer_norm(x, (C,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"]))
        x = x + F.linear(h, p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    return x


def test_registered() -> None:
    assert ENCODERS.get("eva_vit_g") is build_eva_vit_g
    assert isinstance(tiny_encoder(), Encoder)


def test_full_size_on_meta_has_lavis_shape_and_parameter_count() -> None:
    cfg = EvaViTConfig()
    with torch.device("meta"):
        encoder = build_eva_vit_g(cfg)
        features = encoder(torch.empty(2, 3, 224, 224))
    assert (encoder.width, cfg.output_width(), cfg.num_tokens("image", (3, 224, 224))) == (1408, 1408, 257)
    assert cfg.num_tokens("video", (3, 224, 224)) == 257  # a frame is encoded like an image
    assert features.shape == (2, 257, 1408)
    # Spec 1.14; timm's zero k bias is a (non-persistent) buffer, not a parameter, and no final norm exists.
    assert sum(p.numel() for p in encoder.backbone.parameters()) == 985_894_528
    block = encoder.backbone.blocks[0]
    assert block.mlp.fc1.out_features == 6144 and isinstance(block.mlp.act, nn.GELU)
    assert block.mlp.act.approximate == "none" and block.gamma_1 is None and block.gamma_2 is None
    for name in ("norm_pre", "norm", "fc_norm", "head"):
        assert isinstance(getattr(encoder.backbone, name), nn.Identity), name
    assert encoder.backbone.rope is None and encoder.ln_vision.eps == 1e-5


def test_tiny_forward_shape() -> None:
    features = tiny_encoder()(torch.randn(3, 3, 28, 28))
    assert features.shape == (3, TINY.num_tokens("image", (3, 28, 28)), 32) == (3, 5, 32)
    assert torch.isfinite(features).all()


def test_preprocessing_is_the_built_resolution_and_clip_statistics() -> None:
    assert TINY.preprocessing("image") == {
        "image_processor": "clip_image",
        "image_size": 28,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
    }
    assert TINY.preprocessing("video") == {
        "video_processor": "video_frames",
        "image_size": 28,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
    }
    with pytest.raises(ValueError, match="'audio'"):
        TINY.preprocessing("audio")
    assert {"clip_image", "video_frames"} <= set(PROCESSORS.names())


def test_lavis_names_are_timm_names_and_save_load_round_trips(checkpoint: tuple[Path, dict[str, Tensor]]) -> None:
    """The LAVIS file's keys (minus the dropped last block) are exactly the timm backbone's: no renaming exists."""
    path, lavis = checkpoint
    lavis = {k: v for k, v in lavis.items() if not k.startswith(f"blocks.{TINY.depth}.")}
    encoder = tiny_encoder()
    assert set(lavis) == set(encoder.backbone.state_dict())

    encoder.load_checkpoint(path)
    assert all(torch.equal(encoder.backbone.state_dict()[k], lavis[k]) for k in lavis)
    reloaded = tiny_encoder()
    torch.save(encoder.backbone.state_dict(), path)
    load_eva_checkpoint(reloaded, path)
    pixels = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(reloaded(pixels), encoder(pixels), rtol=0, atol=0)


@pytest.mark.parametrize("wrapped", [False, True])
def test_matches_lavis_reference(checkpoint: tuple[Path, dict[str, Tensor]], wrapped: bool) -> None:
    path, lavis = checkpoint
    if wrapped:
        torch.save({"model": lavis}, path)
    encoder = tiny_encoder()
    with torch.no_grad():
        encoder.ln_vision.weight.normal_(1.0, 0.1)
        encoder.ln_vision.bias.normal_(0.0, 0.1)
    load_eva_checkpoint(encoder, path)  # blocks.2 (the "blocks.39" of the tiny file) is dropped silently
    pixels = torch.randn(2, 3, 28, 28)
    tokens = lavis_reference_forward(lavis, pixels, TINY.num_heads, TINY.depth)
    expected = F.layer_norm(tokens, (32,), encoder.ln_vision.weight, encoder.ln_vision.bias, eps=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), expected, rtol=0, atol=1e-5)


def test_load_after_meta_build(checkpoint: tuple[Path, dict[str, Tensor]]) -> None:
    path, _ = checkpoint
    with torch.device("meta"):
        encoder = tiny_encoder()
    with pytest.raises(ValueError, match="meta"):
        load_eva_checkpoint(encoder, path)
    encoder.to_empty(device="cpu")
    torch.nn.init.ones_(encoder.ln_vision.weight)
    torch.nn.init.zeros_(encoder.ln_vision.bias)
    load_eva_checkpoint(encoder, path)  # must also re-zero the non-persistent k bias left garbage by to_empty
    reference = tiny_encoder()
    load_eva_checkpoint(reference, path)
    pixels = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(encoder(pixels), reference(pixels), rtol=0, atol=0)


def test_pos_embed_is_interpolated_keeping_cls(checkpoint: tuple[Path, dict[str, Tensor]]) -> None:
    path, lavis = checkpoint
    encoder = tiny_encoder(image_size=42)
    load_eva_checkpoint(encoder, path)
    pos_embed = encoder.backbone.pos_embed.detach()
    assert pos_embed.shape == (1, 1 + 3 * 3, 32)
    torch.testing.assert_close(pos_embed[:, :1], lavis["pos_embed"][:, :1], rtol=0, atol=0)
    grid = lavis["pos_embed"][:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(pos_embed[:, 1:], expected.reshape(1, 9, 32))
    assert encoder(torch.randn(1, 3, 42, 42)).shape == (1, 10, 32)


@pytest.mark.parametrize(("edit", "key"), [("add", "head.weight"), ("remove", "blocks.1.attn.q_bias")])
def test_mismatched_keys_raise(checkpoint: tuple[Path, dict[str, Tensor]], edit: str, key: str) -> None:
    path, lavis = checkpoint
    if edit == "add":
        lavis[key] = torch.zeros(1)
    else:
        del lavis[key]
    torch.save(lavis, path)
    with pytest.raises(ValueError, match=key) as error:
        load_eva_checkpoint(tiny_encoder(), path)
    assert str(path) in str(error.value)


def test_wrong_width_raises(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    write_tiny_eva_checkpoint(path, width=48)
    with pytest.raises(ValueError, match="wide.pth"):
        load_eva_checkpoint(tiny_encoder(), path)


def test_ln_vision_runs_in_fp32() -> None:
    encoder = tiny_encoder()
    tokens = torch.randn(2, 5, 32).to(torch.bfloat16)
    out = encoder.ln_vision(tokens)
    assert out.dtype == torch.bfloat16
    expected = F.layer_norm(tokens.float(), (32,), encoder.ln_vision.weight, encoder.ln_vision.bias, eps=1e-5)
    torch.testing.assert_close(out, expected.to(torch.bfloat16), rtol=0, atol=0)
