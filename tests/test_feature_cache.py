"""The frozen-feature cache: same losses as encoding on the fly, never a stale entry, only deterministic media."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from chatbridge.config_loading import load_config
from chatbridge.data.feature_cache import FeatureCache, StaleCacheError, preprocessing_fingerprint
from chatbridge.data.mixture import build_datasets, build_train_mixture, dataset_configs
from chatbridge.models.llm import load_tokenizer
from chatbridge.models.setup import build_model_for_training
from chatbridge.synthetic.tiny_llm import write_tiny_llama_folder
from chatbridge.synthetic.world import SCALES, ensure_world
from chatbridge.training.feature_cache import attach_feature_caches
from tests.tiny_sizes import SMALL

REPO = Path(__file__).resolve().parents[1]


SETTING_OPTIONS = [
    *SMALL,  # random towers: another init_seed gives other tower weights
    "datasets.video_captions.processor.frame_sampling=segment_middle",
    "datasets.image_captions.batch_size=4",
    "datasets.video_captions.batch_size=4",
    "datasets.audio_captions.batch_size=4",
]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    ensure_world(root / "world", seed=0, sizes=SCALES["tiny"])
    write_tiny_llama_folder(root / "llm")
    options = [
        *SETTING_OPTIONS,
        f"synthetic.world={root / 'world'}",
        f"model.llm.path={root / 'llm'}",
        f"run.feature_cache={root / 'features'}",
    ]
    config = load_config(REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml", options)
    model = build_model_for_training(config.model).eval()
    return config, model, load_tokenizer(config.model.llm.path)


def first_batches(config, model, tokenizer, count: int = 6, fill: bool = True):
    """The first batches, with the datasets reading the feature cache if the config names one."""
    sources = build_datasets(config, tokenizer)
    cached = {}
    if config.run.feature_cache:
        cached = attach_feature_caches(sources, dataset_configs(config), model, Path(config.run.feature_cache), fill)
    mixture = build_train_mixture(config, sources, tokenizer, rank=0, world_size=1)
    return cached, [(name, batch) for name, [batch] in (next(mixture) for _ in range(count))]


def test_cached_features_give_the_losses_of_encoding_on_the_fly(setting):
    config, model, tokenizer = setting
    cached_modalities, cached = first_batches(config, model, tokenizer)
    assert cached_modalities == {
        "image_captions": ["image"],
        "video_captions": ["video"],
        "audio_captions": [],  # random training segments: never cached
    }
    plain_config = dataclasses.replace(config, run=dataclasses.replace(config.run, feature_cache=None))
    _, plain = first_batches(plain_config, model, tokenizer)
    with torch.no_grad():
        for (name, with_cache), (same_name, without) in zip(cached, plain, strict=True):
            assert name == same_name
            assert set(with_cache.features) | set(with_cache.media) == set(without.media)
            torch.testing.assert_close(model(with_cache).loss, model(without).loss, rtol=0, atol=1e-5)


def test_other_tower_weights_never_read_the_cache(setting):
    config, model, tokenizer = setting
    first_batches(config, model, tokenizer, count=1)  # make sure the cache is filled for `model`
    other = build_model_for_training(dataclasses.replace(config.model, init_seed=1))
    cached_modalities, _ = first_batches(config, other, tokenizer, count=1, fill=False)
    assert cached_modalities == {"image_captions": [], "video_captions": [], "audio_captions": []}


def test_a_moved_media_folder_is_not_taken_for_cached(setting, tmp_path):
    """Entries are keyed by media path: a world at another path (another checkout sharing `.cache/features`) must
    not count as cached under its old paths (training once failed with every video "missing"); it is filled anew."""
    config, model, tokenizer = setting
    first_batches(config, model, tokenizer, count=1)  # filled for the world where it is
    moved = tmp_path / "world"
    shutil.copytree(config.synthetic.world, moved)
    options = [
        f"synthetic.world={moved}",
        f"model.llm.path={config.model.llm.path}",
        f"run.feature_cache={config.run.feature_cache}",
    ]
    moved_config = load_config(REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml", [*SETTING_OPTIONS, *options])
    not_filled, _ = first_batches(moved_config, model, tokenizer, count=1, fill=False)
    assert not_filled == {"image_captions": [], "video_captions": [], "audio_captions": []}
    filled, batches = first_batches(moved_config, model, tokenizer, count=6)
    assert filled["video_captions"] == ["video"] and {name for name, _ in batches} >= {"video_captions"}


def test_an_entry_written_under_another_key_is_refused(tmp_path):
    media = tmp_path / "a.png"
    good = FeatureCache(tmp_path / "cache", "image", "tower-a", "prep")
    good.write(media, torch.ones(1, 3, 4))
    torch.testing.assert_close(good.read(media), torch.ones(1, 3, 4))
    moved = FeatureCache(tmp_path / "cache", "image", "tower-a", "prep")
    moved_entry = moved.entry(tmp_path / "b.png")
    moved_entry.parent.mkdir(parents=True, exist_ok=True)
    good.entry(media).rename(moved_entry)  # an entry under another media's name
    with pytest.raises(StaleCacheError, match="was written for"):
        moved.read(tmp_path / "b.png")


def test_only_deterministic_preprocessing_is_cacheable(setting):
    config, _, _ = setting
    processor = config.datasets["image_captions"].processor
    assert preprocessing_fingerprint("image", processor) is not None
    assert preprocessing_fingerprint("image", dataclasses.replace(processor, augment=True)) is None
    assert preprocessing_fingerprint("video", dataclasses.replace(processor, frame_sampling=None)) is None
    assert preprocessing_fingerprint("audio", processor) is None
    assert preprocessing_fingerprint("image", dataclasses.replace(processor, image_size=48)) != (
        preprocessing_fingerprint("image", processor)
    )
