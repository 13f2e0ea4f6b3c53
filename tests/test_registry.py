"""The registry: explicit names, loud duplicates, unknown names listed."""

from __future__ import annotations

import pytest

from chatbridge import registry
from chatbridge.registry import Registry


def test_register_and_get_returns_the_builder():
    widgets = Registry("widget")

    @widgets.register("small")
    def build_small() -> str:
        return "small"

    assert widgets.get("small") is build_small
    assert widgets.names() == ["small"]
    assert "small" in widgets and "large" not in widgets


def test_duplicate_name_is_an_error():
    widgets = Registry("widget")
    widgets.register("small")(lambda: 1)
    with pytest.raises(KeyError, match="duplicate widget 'small'"):
        widgets.register("small")(lambda: 2)


def test_unknown_name_lists_known_names():
    widgets = Registry("widget")
    widgets.register("b")(lambda: 1)
    widgets.register("a")(lambda: 2)
    with pytest.raises(KeyError) as error:
        widgets.get("c")
    assert error.value.args[0] == "unknown widget 'c'; known: ['a', 'b']"


def test_builtin_names_are_exactly_these():
    """A forgotten import in a subpackage's __init__ shows up here, not at launch."""
    registry.load_builtin_components()
    assert registry.ENCODERS.names() == ["beats", "eva_vit_g", "imagebind_huge"]
    assert registry.CONNECTORS.names() == ["item_mean", "linear", "mlp", "qformer_per_modality", "shared_qformer"]
    assert registry.LLMS.names() == ["hf_causal_lm"]
    assert registry.MODELS.names() == ["chatbind", "chatbridge"]
    assert registry.DATASETS.names() == ["caption_json", "caption_shards", "llava_json", "multis_json"]
    assert registry.PROCESSORS.names() == [
        "beats_fbank",
        "clip_image",
        "imagebind_audio",
        "imagebind_image",
        "imagebind_video",
        "video_frames",
    ]
    assert registry.CHAT_TEMPLATES.names() == ["chatbridge", "llava_multimodal", "llava_v0", "llava_v1"]
