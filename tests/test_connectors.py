"""Connectors: shapes, the shared Q-Former's sharing, temporal embeddings, BLIP-2 key mapping and a golden output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from chatbridge.config import ConnectorConfig
from chatbridge.config_loading import load_config
from chatbridge.models.connectors.linear import LinearConfig, MLPConfig
from chatbridge.models.connectors.qformer import (
    QFormerConfig,
    hf_qformer_to_lavis,
    lavis_qformer_to_hf,
    read_blip2_checkpoint,
)
from chatbridge.registry import CONNECTORS
from tests.fixtures.blip2 import write_tiny_blip2_checkpoint

MEMORY_WIDTH = 24  # differs from the Q-Former width so that a width mix-up fails
TOKENS = 5  # L, memory tokens per frame / segment
BATCH = 2
# (query set, S): an image, a 4-frame video (image queries), a 2-segment audio clip.
INPUTS = [("image", 1), ("image", 4), ("audio", 2)]
TINY_PRETRAIN = Path(__file__).resolve().parents[1] / "train_configs" / "chatbridge_tiny_pretrain.yaml"
QUERY_SETS = ("image", "audio")  # ChatBridge's routes: image and video -> "image", audio -> "audio"


def tiny_cfg(name: str = "shared_qformer", **overrides) -> ConnectorConfig:
    if name == "linear":
        return LinearConfig(**overrides)
    if name == "mlp":
        return MLPConfig(hidden_size=32, **overrides)
    return QFormerConfig(
        name=name, num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, num_query_tokens=4, **overrides
    )


def build(cfg: ConnectorConfig, memory_width: int = MEMORY_WIDTH, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return CONNECTORS.get(cfg.name)(cfg, memory_width, QUERY_SETS).eval()


def memory(num_segments: int, seed: int = 1, width: int = MEMORY_WIDTH) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, num_segments, TOKENS, width, generator=generator)


@pytest.mark.parametrize("query_set,num_segments", INPUTS)
@pytest.mark.parametrize(
    "name,width,tokens",
    [
        ("shared_qformer", 32, lambda s: 4),
        ("qformer_per_modality", 32, lambda s: 4),
        ("linear", MEMORY_WIDTH, lambda s: s * TOKENS),
        ("mlp", 32, lambda s: s * TOKENS),
    ],
)
def test_output_shape(name, width, tokens, query_set, num_segments):
    cfg = tiny_cfg(name)
    connector = build(cfg)
    output = connector(memory(num_segments), query_set)
    assert connector.output_width == cfg.output_width(MEMORY_WIDTH) == width
    assert cfg.output_tokens(num_segments, TOKENS) == tokens(num_segments)
    assert output.shape == (BATCH, tokens(num_segments), width)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("name", ["shared_qformer", "qformer_per_modality"])
def test_unknown_query_set_raises(name):
    with pytest.raises(ValueError, match="video"):
        build(tiny_cfg(name))(memory(1), "video")


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_connectors_without_queries_ignore_the_query_set(name):
    """Linear and MLP have no query sets: routes give them `queries: None`, and a name changes nothing."""
    connector = build(tiny_cfg(name))
    video = memory(2)
    torch.testing.assert_close(connector(video, None), connector(video, "image"), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_temporal_embeddings_need_a_qformer(name):
    """Only Q-Former configs have `temporal_embeddings`; asking a linear or MLP connector for them is a config error."""
    overrides = [f"model.connector.name={name}", "model.connector.temporal_embeddings=true"]
    with pytest.raises(ValueError, match="temporal"):
        load_config(TINY_PRETRAIN, overrides, require_paths=False)


def test_shared_qformer_shares_weights_but_not_queries():
    connector = build(tiny_cfg(zero_query_sets=[]))
    assert sorted(connector.query_tokens) == sorted(QUERY_SETS)
    assert not any("image" in name or "audio" in name for name, _ in connector.qformer.named_parameters())
    video = memory(4)
    assert not torch.allclose(connector(video, "image"), connector(video, "audio"))
    with torch.no_grad():
        connector.query_tokens["audio"].copy_(connector.query_tokens["image"])
    torch.testing.assert_close(connector(video, "image"), connector(video, "audio"), rtol=0, atol=0)


def test_query_init():
    connector = build(tiny_cfg())
    assert torch.count_nonzero(connector.query_tokens["audio"]) == 0  # the reference's zero audio queries
    assert 0.01 < connector.query_tokens["image"].std() < 0.04  # N(0, 0.02)
    assert build(tiny_cfg(zero_query_sets=[])).query_tokens["audio"].std() > 0.01


def test_per_modality_qformers_are_separate():
    connector = build(tiny_cfg("qformer_per_modality", zero_query_sets=[]))
    assert sorted(connector.qformers) == sorted(QUERY_SETS)
    with torch.no_grad():
        connector.query_tokens["audio"].copy_(connector.query_tokens["image"])
    video = memory(2)
    assert not torch.allclose(connector(video, "image"), connector(video, "audio"))


def test_batched_forward_equals_per_sample():
    connector = build(tiny_cfg())
    video = memory(4)
    per_sample = torch.cat([connector(video[i : i + 1], "image") for i in range(BATCH)])
    torch.testing.assert_close(connector(video, "image"), per_sample, rtol=1e-5, atol=1e-5)


def test_temporal_embeddings():
    enabled = build(tiny_cfg(temporal_embeddings=True))
    disabled = build(tiny_cfg())
    assert enabled.temporal_embeddings["image"].shape == (1, 4, 1, MEMORY_WIDTH)
    assert enabled.temporal_embeddings["audio"].shape == (1, 2, 1, MEMORY_WIDTH)
    assert disabled.temporal_embeddings is None
    video = memory(4)
    reference = disabled(video, "image")
    torch.testing.assert_close(enabled(video, "image"), reference, rtol=0, atol=0)  # zero init: no change
    with torch.no_grad():
        enabled.temporal_embeddings["audio"].normal_()
    torch.testing.assert_close(enabled(video, "image"), reference, rtol=0, atol=0)  # other query set: no change
    with torch.no_grad():
        enabled.temporal_embeddings["image"][:, 3].normal_()  # only the last frame's embedding
    assert not torch.allclose(enabled(video, "image"), reference)
    with pytest.raises(ValueError, match="covers 2"):
        enabled(memory(3), "audio")


def test_audio_queries_get_no_gradient_from_image_loss():
    connector = build(tiny_cfg())
    connector(memory(1), "image").square().sum().backward()
    assert connector.query_tokens["image"].grad is not None
    assert connector.query_tokens["audio"].grad is None


# Mean over batch and queries of output channels 0..3 of `build(tiny_cfg())` on `memory(4)` with the image queries
# (seed 0 for the init, seed 1 for the memory); obtained by running this test's first two lines once with torch 2.14.1
# (CPU) and transformers 5.23.0 and printing `golden.tolist()`. Regenerate only for an intended change of init or
# forward. Not the plain mean: the output ends in a LayerNorm with unit weight and zero bias at init, so each
# token's mean over channels is ~0 whatever the weights are.
GOLDEN_CHANNEL_MEAN = [0.6185398697853088, -0.2915908694267273, -0.029513731598854065, 0.3713509738445282]


def test_golden_output():
    output = build(tiny_cfg())(memory(4), "image")
    golden = output.mean(dim=(0, 1))[:4]
    torch.testing.assert_close(golden, torch.tensor(GOLDEN_CHANNEL_MEAN), rtol=0, atol=1e-5)


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        connector = CONNECTORS.get("shared_qformer")(QFormerConfig(), 1408, QUERY_SETS)
    qformer = sum(p.numel() for p in connector.qformer.parameters())
    assert qformer == 105_137_664  # docs/reference/chatbridge.md §1.14: the pruned Q-Former
    assert sum(p.numel() for p in connector.parameters()) == 105_137_664 + 2 * 24_576  # + two (1, 32, 768) sets
    blocks = {name.split(".")[3] for name in connector.qformer.state_dict() if name.startswith("encoder.layer.")}
    assert blocks == {"attention", "crossattention", "intermediate_query", "output_query"}  # no text FFN


def test_key_mapping_round_trip():
    hf_state = build(tiny_cfg()).qformer.state_dict()
    lavis_state = hf_qformer_to_lavis(hf_state)
    assert "Qformer.bert.embeddings.LayerNorm.weight" in lavis_state
    assert "Qformer.bert.encoder.layer.0.crossattention.self.key.weight" in lavis_state
    back = lavis_qformer_to_hf(lavis_state)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[key], hf_state[key]) for key in hf_state)
    assert hf_qformer_to_lavis(back).keys() == lavis_state.keys()


def test_mapped_weights_give_the_same_output():
    original, fresh = build(tiny_cfg(), seed=0), build(tiny_cfg(), seed=123)
    video = memory(4)
    assert not torch.allclose(original(video, "image"), fresh(video, "image"))
    lavis_state = hf_qformer_to_lavis(original.qformer.state_dict())
    fresh.qformer.load_state_dict(lavis_qformer_to_hf(lavis_state), strict=True)
    fresh.query_tokens.load_state_dict(original.query_tokens.state_dict())
    torch.testing.assert_close(fresh(video, "image"), original(video, "image"), rtol=0, atol=0)


def test_text_parts_raise_unless_dropped(tmp_path):
    lavis_state = write_tiny_blip2_checkpoint(tmp_path / "blip2.pth")
    qformer_state = {key: tensor for key, tensor in lavis_state.items() if key.startswith("Qformer.")}
    with pytest.raises(ValueError, match="drop_text_parts"):
        lavis_qformer_to_hf(qformer_state)
    mapped = lavis_qformer_to_hf(qformer_state, drop_text_parts=True)
    assert mapped.keys() == build(tiny_cfg(), memory_width=32).qformer.state_dict().keys()
    with pytest.raises(ValueError, match="ln_vision"):
        lavis_qformer_to_hf({"ln_vision.weight": torch.ones(2)})


def lavis_qformer_reference(state: dict[str, Tensor], queries: Tensor, memory: Tensor, cfg: QFormerConfig):
    """LAVIS's pruned Q-Former written out in plain torch from LAVIS key names (BERT post-LN blocks)."""

    def linear(x: Tensor, name: str) -> Tensor:
        return F.linear(x, state[f"Qformer.bert.{name}.weight"], state[f"Qformer.bert.{name}.bias"])

    def norm(x: Tensor, name: str) -> Tensor:
        weight, bias = state[f"Qformer.bert.{name}.weight"], state[f"Qformer.bert.{name}.bias"]
        return F.layer_norm(x, x.shape[-1:], weight, bias, cfg.layer_norm_eps)

    def attention(x: Tensor, context: Tensor, block: str) -> Tensor:
        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)

        q, k, v = (
            heads(linear(src, f"{block}.self.{n}")) for src, n in ((x, "query"), (context, "key"), (context, "value"))
        )
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return norm(linear(attended, f"{block}.output.dense") + x, f"{block}.output.LayerNorm")

    x = norm(queries, "embeddings.LayerNorm")
    for index in range(cfg.num_layers):
        layer = f"encoder.layer.{index}"
        x = attention(x, x, f"{layer}.attention")
        if index % cfg.cross_attention_frequency == 0:
            x = attention(x, memory, f"{layer}.crossattention")
        hidden = F.gelu(linear(x, f"{layer}.intermediate_query.dense"))
        x = norm(linear(hidden, f"{layer}.output_query.dense") + x, f"{layer}.output_query.LayerNorm")
    return x


def test_read_blip2_checkpoint(tmp_path):
    path = tmp_path / "blip2.pth"
    lavis_state = write_tiny_blip2_checkpoint(path, encoder_width=MEMORY_WIDTH)
    connector = build(tiny_cfg())
    tensors, ln_vision = read_blip2_checkpoint(path)
    expected = {f"qformer.{key}" for key in connector.qformer.state_dict()} | {"query_tokens.image"}
    assert tensors.keys() == expected
    assert ln_vision.keys() == {"weight", "bias"}
    assert torch.equal(ln_vision["weight"], lavis_state["ln_vision.weight"])
    assert torch.equal(ln_vision["bias"], lavis_state["ln_vision.bias"])

    missing, unexpected = connector.load_state_dict(tensors, strict=False)
    assert missing == ["query_tokens.audio"] and unexpected == []
    video = memory(4)
    queries = lavis_state["query_tokens"].expand(BATCH, -1, -1)
    reference = lavis_qformer_reference(lavis_state, queries, video.flatten(1, 2), tiny_cfg())
    torch.testing.assert_close(connector(video, "image"), reference, rtol=1e-5, atol=1e-5)


def test_read_blip2_checkpoint_rejects_other_files(tmp_path):
    path = tmp_path / "not_blip2.pth"
    torch.save({"model": {"visual_encoder.cls_token": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not_blip2.pth.*query_tokens.*Qformer"):
        read_blip2_checkpoint(path)
    torch.save({"visual_encoder.cls_token": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not_blip2.pth.*'model'"):
        read_blip2_checkpoint(path)
