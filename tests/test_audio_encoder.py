"""BEATs + ln_audio: shapes, parameter count, upstream numerics, official-checkpoint loading (tiny, CPU)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import chatbridge.data.processors  # noqa: F401  (registers the processors)
from chatbridge.models.encoders.base import Encoder
from chatbridge.models.encoders.beats import (
    BeatsConfig,
    BeatsEncoder,
    beats_kwargs_from_cfg,
    build_beats,
    build_beats_from_checkpoint_cfg,
    load_beats_checkpoint,
    new_to_old_weight_norm_keys,
    old_to_new_weight_norm_keys,
    read_beats_cfg,
)
from chatbridge.models.encoders.beats_network import BEATs, relative_position_buckets
from chatbridge.registry import ENCODERS, PROCESSORS
from tests.fixtures.beats import TINY_BEATS_CFG, write_tiny_beats_checkpoint

TINY_AUDIO_CONFIG = BeatsConfig(
    num_mel_bins=32,
    embed_dim=16,
    width=32,
    depth=2,
    num_heads=4,
    ffn_dim=64,
    conv_pos=16,
    conv_pos_groups=4,
    num_buckets=32,
    max_distance=64,
)


def _fbank(seed: int = 0, batch: int = 2, frames: int = 64, bins: int = 32) -> torch.Tensor:
    return torch.randn(batch, frames, bins, generator=torch.Generator().manual_seed(seed))


def _encode(encoder: BeatsEncoder, fbank: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(fbank)


# --- builder, shapes, parameter count -------------------------------------------------------------------------


def test_registered_builder_builds_tiny_encoder_with_expected_shape():
    assert ENCODERS.get("beats") is build_beats
    encoder = ENCODERS.get("beats")(TINY_AUDIO_CONFIG)
    assert isinstance(encoder, Encoder)
    out = _encode(encoder, _fbank(frames=64, bins=32))
    assert out.shape == (2, TINY_AUDIO_CONFIG.num_tokens("audio", (64, 32)), 32) == (2, 8, 32)
    assert encoder.width == TINY_AUDIO_CONFIG.output_width() == 32
    assert torch.isfinite(out).all()


def test_full_size_output_shape_on_meta_device():
    cfg = BeatsConfig()
    with torch.device("meta"):
        encoder = build_beats(cfg)
    out = encoder(torch.empty(3, 1024, 64, device="meta"))
    assert out.shape == (3, (1024 // 16) * (64 // 16), 768) == (3, 256, 768)
    assert cfg.num_tokens("audio", (1024, 64)) == 256


def test_full_size_state_dict_matches_spec_count_and_layout():
    with torch.device("meta"):
        backbone = build_beats(BeatsConfig()).backbone
    state_dict = new_to_old_weight_norm_keys(backbone.state_dict())
    # Spec 1.14: the shared 320x12 table is counted under each of the 12 layer names, as upstream saves it.
    assert sum(tensor.numel() for tensor in state_dict.values()) == 90_354_032
    assert sum(parameter.numel() for parameter in backbone.parameters()) == 90_354_032 - 11 * 320 * 12
    expected_shapes = {  # docs/reference/chatbridge.md §3.4
        "patch_embedding.weight": (512, 1, 16, 16),
        "layer_norm.weight": (512,),
        "post_extract_proj.weight": (768, 512),
        "encoder.pos_conv.0.bias": (768,),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (768, 48, 128),
        "encoder.layer_norm.weight": (768,),
        "encoder.layers.11.self_attn.grep_linear.weight": (8, 64),
        "encoder.layers.11.self_attn.grep_a": (1, 12, 1, 1),
        "encoder.layers.11.self_attn.relative_attention_bias.weight": (320, 12),
        "encoder.layers.11.fc1.weight": (3072, 768),
        "encoder.layers.11.fc2.weight": (768, 3072),
    }
    assert {key: tuple(state_dict[key].shape) for key in expected_shapes} == expected_shapes
    assert "patch_embedding.bias" not in state_dict


def test_preprocessing_is_beats_fbank_with_its_statistics():
    # BEATs' AudioSet fbank statistics (upstream `BEATs.preprocess`), 16 kHz, 64 bins for the released ChatBridge.
    assert BeatsConfig().preprocessing("audio") == {
        "audio_processor": "beats_fbank",
        "sample_rate": 16000,
        "num_mel_bins": 64,
        "fbank_mean": 15.41663,
        "fbank_std": 6.55582,
    }
    assert TINY_AUDIO_CONFIG.preprocessing("audio")["num_mel_bins"] == 32
    assert "beats_fbank" in PROCESSORS.names()
    with pytest.raises(ValueError, match="'image'"):
        BeatsConfig().preprocessing("image")


def test_relative_position_table_is_shared_by_all_layers():
    layers = build_beats(TINY_AUDIO_CONFIG).backbone.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias


def test_ln_audio_runs_in_fp32_and_returns_input_dtype():
    encoder = build_beats(TINY_AUDIO_CONFIG)
    tokens = torch.randn(2, 5, 32).to(torch.bfloat16)
    out = encoder.ln_audio(tokens)
    expected = torch.nn.functional.layer_norm(tokens.float(), (32,), eps=1e-5).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# --- upstream numerics ----------------------------------------------------------------------------------------


def _t5_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    """Bidirectional T5 bucketing written from the formula, element by element."""
    half = num_buckets // 2
    max_exact = half // 2
    bucket = half if offset > 0 else 0
    distance = abs(offset)
    if distance < max_exact:
        return bucket + distance
    large = max_exact + int(math.log(distance / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
    return bucket + min(large, half - 1)


def test_relative_position_buckets_match_formula():
    length, num_buckets, max_distance = 300, 320, 800
    buckets = relative_position_buckets(length, num_buckets, max_distance, torch.device("cpu"))
    for query in (0, 7, 150, 299):
        expected = [_t5_bucket(key - query, num_buckets, max_distance) for key in range(length)]
        assert buckets[query].tolist() == expected


def test_attention_equals_plain_softmax_attention_with_gated_bias():
    """The max-subtraction and x32 trick cancel inside the softmax: compare with the textbook computation."""
    torch.manual_seed(0)
    backbone = build_beats(TINY_AUDIO_CONFIG).backbone.eval()
    attention = backbone.encoder.layers[1].self_attn
    with torch.no_grad():
        attention.grep_a.uniform_(0.5, 1.5)
        attention.relative_attention_bias.weight.normal_()  # large enough that a wrong gate shows
        x = torch.randn(2, 10, 32)
        position_bias = attention.position_bias(10)  # (H, L, L)
        actual = attention(x, position_bias)

        N, L, H, D = 2, 10, 4, 8
        q = (x @ attention.q_proj.weight.T + attention.q_proj.bias).view(N, L, H, D).transpose(1, 2)
        k = (x @ attention.k_proj.weight.T + attention.k_proj.bias).view(N, L, H, D).transpose(1, 2)
        v = (x @ attention.v_proj.weight.T + attention.v_proj.bias).view(N, L, H, D).transpose(1, 2)
        gate_logits = q @ attention.grep_linear.weight.T + attention.grep_linear.bias  # (N, H, L, 8)
        gate_a = torch.sigmoid(gate_logits[..., :4].sum(-1, keepdim=True))
        gate_b = torch.sigmoid(gate_logits[..., 4:].sum(-1, keepdim=True))
        gate = gate_a * (gate_b * attention.grep_a - 1.0) + 2.0  # (N, H, L, 1)
        buckets = relative_position_buckets(L, 32, 64, x.device)  # checked against the formula above
        bias = attention.relative_attention_bias.weight[buckets].permute(2, 0, 1)  # (H, L, L)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + gate * bias, dim=-1)
        expected = (probs @ v).transpose(1, 2).reshape(N, L, H * D) @ attention.out_proj.weight.T
        expected = expected + attention.out_proj.bias
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_deep_norm_layer_scales_residual_before_post_layer_norm():
    backbone = BEATs(**beats_kwargs_from_cfg(TINY_BEATS_CFG)).eval()
    layer = backbone.encoder.layers[0]
    alpha = (2 * 2) ** 0.25
    assert layer.deep_norm_alpha == pytest.approx(alpha)
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        bias = layer.self_attn.position_bias(6)
        h = layer.self_attn_layer_norm(x * alpha + layer.self_attn(x, bias))
        ffn = layer.fc2(torch.nn.functional.gelu(layer.fc1(h)))
        expected = layer.final_layer_norm(h * alpha + ffn)
        torch.testing.assert_close(layer(x, bias), expected)


# --- official checkpoints ---------------------------------------------------------------------------------------


def test_weight_norm_key_remapping_round_trips():
    state_dict = {"encoder.pos_conv.0.weight_g": 1, "encoder.pos_conv.0.weight_v": 2, "encoder.pos_conv.0.bias": 3}
    new = old_to_new_weight_norm_keys(state_dict)
    assert set(new) == {
        "encoder.pos_conv.0.parametrizations.weight.original0",
        "encoder.pos_conv.0.parametrizations.weight.original1",
        "encoder.pos_conv.0.bias",
    }
    assert new_to_old_weight_norm_keys(new) == state_dict
    assert old_to_new_weight_norm_keys(new) == new


@pytest.mark.parametrize("old_names", [True, False])
def test_tiny_checkpoint_loads_with_old_and_new_weight_norm_names(tmp_path, old_names):
    path = tmp_path / "beats.pt"
    checkpoint = write_tiny_beats_checkpoint(path, old_weight_norm_names=old_names, seed=3)
    assert ("encoder.pos_conv.0.weight_g" in checkpoint["model"]) is old_names
    reference = BEATs(**beats_kwargs_from_cfg(checkpoint["cfg"]))
    reference.load_state_dict(old_to_new_weight_norm_keys(checkpoint["model"]))

    encoder = build_beats(TINY_AUDIO_CONFIG)
    load_beats_checkpoint(encoder, path)
    fbank = _fbank(frames=64, bins=32)
    with torch.no_grad():
        expected = encoder.ln_audio(reference.eval()(fbank))
    torch.testing.assert_close(_encode(encoder, fbank), expected, rtol=0, atol=0)


def test_old_and_new_name_checkpoints_give_equal_outputs(tmp_path):
    write_tiny_beats_checkpoint(tmp_path / "old.pt", old_weight_norm_names=True, seed=1)
    write_tiny_beats_checkpoint(tmp_path / "new.pt", old_weight_norm_names=False, seed=1)
    outputs = []
    for name in ("old.pt", "new.pt"):
        encoder = build_beats_from_checkpoint_cfg(tmp_path / name)
        load_beats_checkpoint(encoder, tmp_path / name)
        outputs.append(_encode(encoder, _fbank()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    fresh = _encode(build_beats(TINY_AUDIO_CONFIG), _fbank())
    assert not torch.allclose(outputs[0], fresh)


def test_unexpected_key_is_rejected_by_name(tmp_path):
    path = tmp_path / "extra.pt"
    checkpoint = write_tiny_beats_checkpoint(path)
    checkpoint["model"]["predictor.weight"] = torch.zeros(527, 32)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"extra\.pt.*unexpected keys \['predictor\.weight'\]"):
        load_beats_checkpoint(build_beats(TINY_AUDIO_CONFIG), path)


def test_missing_key_is_rejected_by_name(tmp_path):
    path = tmp_path / "missing.pt"
    checkpoint = write_tiny_beats_checkpoint(path)
    del checkpoint["model"]["encoder.layers.1.self_attn.grep_a"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"missing\.pt.*missing keys \['encoder\.layers\.1\.self_attn\.grep_a'\]"):
        load_beats_checkpoint(build_beats(TINY_AUDIO_CONFIG), path)


def test_cfg_mismatch_is_rejected_listing_fields(tmp_path):
    path = tmp_path / "deep.pt"
    write_tiny_beats_checkpoint(path, encoder_layers=3, deep_norm=False)
    with pytest.raises(ValueError, match=r"deep\.pt.*depth: checkpoint 3 vs built 2.*deep_norm: checkpoint False"):
        load_beats_checkpoint(build_beats(TINY_AUDIO_CONFIG), path)


def test_deep_norm_comes_from_checkpoint_cfg_and_changes_outputs(tmp_path):
    """deep_norm has no parameters: the same weights under deep_norm False must give different features."""
    with_deep_norm = write_tiny_beats_checkpoint(tmp_path / "deep.pt")
    torch.save(
        {"cfg": {**with_deep_norm["cfg"], "deep_norm": False}, "model": with_deep_norm["model"]}, tmp_path / "plain.pt"
    )
    outputs = {}
    for name in ("deep.pt", "plain.pt"):
        encoder = build_beats_from_checkpoint_cfg(tmp_path / name)
        load_beats_checkpoint(encoder, tmp_path / name)
        outputs[name] = _encode(encoder, _fbank())
    assert encoder.backbone.architecture()["deep_norm"] is False
    assert not torch.allclose(outputs["deep.pt"], outputs["plain.pt"], atol=1e-3)
    with pytest.raises(ValueError, match="deep_norm"):
        load_beats_checkpoint(build_beats(TINY_AUDIO_CONFIG), tmp_path / "plain.pt")


def test_read_beats_cfg_and_non_official_file(tmp_path):
    write_tiny_beats_checkpoint(tmp_path / "beats.pt")
    assert read_beats_cfg(tmp_path / "beats.pt") == TINY_BEATS_CFG
    torch.save({"patch_embedding.weight": torch.zeros(1)}, tmp_path / "raw.pt")
    with pytest.raises(ValueError, match=r"raw\.pt: not an official BEATs checkpoint"):
        read_beats_cfg(tmp_path / "raw.pt")


def test_loading_into_meta_encoder_is_refused(tmp_path):
    write_tiny_beats_checkpoint(tmp_path / "beats.pt")
    with torch.device("meta"):
        encoder = build_beats(TINY_AUDIO_CONFIG)
    with pytest.raises(ValueError, match="meta device"):
        load_beats_checkpoint(encoder, tmp_path / "beats.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finetuned_model": True}, "unsupported BEATs settings"),
        ({"activation_fn": "relu"}, "unsupported BEATs settings"),
        ({"encoder_normalize_before": True}, "unknown BEATs cfg keys \\['encoder_normalize_before'\\]"),
    ],
)
def test_cfg_mapping_rejects_unsupported_settings(change, message):
    with pytest.raises(ValueError, match=message):
        beats_kwargs_from_cfg({**TINY_BEATS_CFG, **change})


def test_cfg_mapping_requires_architecture_keys_and_defaults_training_keys():
    cfg = {key: value for key, value in TINY_BEATS_CFG.items() if key not in ("deep_norm", "dropout")}
    with pytest.raises(ValueError, match=r"lacks architecture keys \['deep_norm'\]"):
        beats_kwargs_from_cfg(cfg)
    kwargs = beats_kwargs_from_cfg({**cfg, "deep_norm": True})
    assert kwargs["dropout"] == 0.1  # upstream BEATsConfig default
    assert kwargs["layerdrop"] == 0.05 and kwargs["depth"] == 2 and kwargs["width"] == 32


def test_builder_matches_config_fields():
    config = replace(TINY_AUDIO_CONFIG, deep_norm=False, gru_rel_pos=False)
    architecture = build_beats(config).backbone.architecture()
    assert architecture["deep_norm"] is False and architecture["gru_rel_pos"] is False
    assert architecture["num_buckets"] == 32 and architecture["embed_dim"] == 16
