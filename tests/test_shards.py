"""Webdataset shards: JSON + media -> shards -> the same samples; index cache; damaged shards; the pack report."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import chatbridge.data.datasets  # noqa: F401  (registers the dataset builders)
from chatbridge.config import DatasetConfig, ProcessorConfig, TrainConfig
from chatbridge.config_loading import load_config
from chatbridge.data import shard_writer
from chatbridge.data.datasets import shards
from chatbridge.data.datasets.base import DataContext
from chatbridge.data.processors.errors import MediaError
from chatbridge.models.llm import load_tokenizer
from chatbridge.registry import DATASETS
from chatbridge.synthetic.world import SCALES, ensure_world

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml"
FOLDERS = {"image": ("images", "image_root"), "video": ("frames", "video_root"), "audio": ("audios", "audio_root")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SCALES["tiny"])


@pytest.fixture(scope="module")
def tiny(tiny_llm_dir) -> TrainConfig:
    return load_config(TINY_PRETRAIN, [f"model.llm.path={tiny_llm_dir}"], require_paths=False)


@pytest.fixture(scope="module")
def processor(tiny) -> ProcessorConfig:
    """The tiny preset's preprocessing, resolved by load_config (32-pixel frames, 2 fbank segments of 128 x 32)."""
    return tiny.processor


@pytest.fixture(scope="module")
def context(tiny):
    tokenizer = load_tokenizer(tiny.model.llm.path)
    return DataContext(tokenizer, dataclasses.replace(tiny.model, max_txt_len=64))


def json_config(world, modality: str, processor: ProcessorConfig) -> DatasetConfig:
    folder, root_field = FOLDERS[modality]
    return DatasetConfig(
        modalities=[modality],
        annotations=str(world.path(f"stage1/{modality}")),
        processor=processor,
        **{root_field: str(world.root / folder)},
    )


def shard_source(folder: Path | str, modality: str, context: DataContext, processor: ProcessorConfig):
    cfg = DatasetConfig(builder="caption_shards", modalities=[modality], annotations=str(folder), processor=processor)
    return DATASETS.get("caption_shards")("shards", cfg, context)


def pack(
    world, processor: ProcessorConfig, modality: str, out: Path, max_per_shard: int = 5
) -> shard_writer.PackReport:
    media_root = world.root / FOLDERS[modality][0]
    return shard_writer.pack_caption_shards(
        world.path(f"stage1/{modality}"), media_root, modality, out, processor, max_per_shard
    )


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_shards_give_the_json_samples(world, context, processor, tmp_path, modality):
    report = pack(world, processor, modality, tmp_path / "shards")
    rows = json.loads(world.path(f"stage1/{modality}").read_text())
    assert (report.written, sum(report.skipped.values())) == (len(rows), 0)
    assert len(report.shards) == -(-len(rows) // 5)
    from_json = DATASETS.get("caption_json")("json", json_config(world, modality, processor), context)
    from_shards = shard_source(tmp_path / "shards", modality, context, processor)
    assert len(from_shards) == len(from_json) == len(rows)
    for index in range(len(rows)):
        record = from_shards.read_json(index)
        assert record["id"] == from_json.media_id(index) == rows[index]["video_id"]
        assert record["caption"] == rows[index].get("desc", rows[index].get("caption"))
        for train in (False, True):
            expected = from_json.load(index, train, torch.Generator().manual_seed(index))
            sample = from_shards.load(index, train, torch.Generator().manual_seed(index))
            assert sample.encoded == expected.encoded
            assert [m.modality for m in sample.media] == [m.modality for m in expected.media] == [modality]
            assert torch.equal(sample.media[0].tensor, expected.media[0].tensor)


def test_shards_are_reproducible_webdataset_tars(world, processor, tmp_path):
    first = pack(world, processor, "image", tmp_path / "a").shards
    second = pack(world, processor, "image", tmp_path / "b").shards
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    with tarfile.open(first[0]) as tar:
        assert tar.getnames()[:4] == ["00000000.json", "00000000.png", "00000001.json", "00000001.png"]
    with pytest.raises(FileExistsError):
        pack(world, processor, "image", tmp_path / "a")


def test_index_cache_is_reused_and_invalidated(world, context, processor, tmp_path, monkeypatch):
    paths = pack(world, processor, "audio", tmp_path / "shards").shards
    assert len(shard_source(tmp_path / "shards", "audio", context, processor)) == 8
    assert all(shards.index_path(path).is_file() for path in paths)
    scanned = []
    real_scan = shards.scan_shard
    monkeypatch.setattr(shards, "scan_shard", lambda path: scanned.append(path.name) or real_scan(path))
    assert len(shard_source(tmp_path / "shards", "audio", context, processor)) == 8
    assert scanned == []
    with open(paths[1], "ab") as handle:  # a changed shard (size and mtime) is rescanned
        handle.write(bytes(512))
    assert len(shard_source(tmp_path / "shards", "audio", context, processor)) == 8
    assert scanned == [paths[1].name]


def test_brace_pattern_selects_shards(world, context, processor, tmp_path):
    pack(world, processor, "image", tmp_path / "shards", max_per_shard=4)
    source = shard_source(tmp_path / "shards" / "shard-{000001..000002}.tar", "image", context, processor)
    assert len(source) == 8
    assert source.read_json(0)["id"] == "img_00004.png"
    with pytest.raises(ValueError, match="missing"):
        shard_source(tmp_path / "shards" / "shard-{000001..000009}.tar", "image", context, processor)


def test_truncated_and_garbage_shards_are_skipped_with_counts(world, context, processor, tmp_path, caplog):
    paths = pack(world, processor, "image", tmp_path / "shards", max_per_shard=4).shards
    assert len(paths) == 3
    with tarfile.open(paths[1]) as tar:
        members = {info.name: info for info in tar.getmembers()}
    cut = members["00000006.png"]  # sample 6 of samples 4..7 loses half of its image
    with open(paths[1], "r+b") as handle:
        handle.truncate(cut.offset_data + cut.size // 2)
    paths[2].write_bytes(np.random.default_rng(0).bytes(3000))
    source = shard_source(tmp_path / "shards", "image", context, processor)
    assert [source.read_json(index)["id"] for index in range(len(source))] == [
        f"img_{number:05d}.png" for number in (0, 1, 2, 3, 4, 5)
    ]
    assert source.dropped == {"shard-000001.tar": 1, "shard-000002.tar": 0}
    assert "not a readable tar" in source.problems["shard-000002.tar"]
    assert "shard-000001.tar" in caplog.text and "1 samples dropped" in caplog.text


def test_bad_member_raises_media_error_at_load(world, context, processor, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty.wav"
    empty.touch()
    good = world.root / "images" / "img_00000.png"
    shard_writer.write_shards([("good", "a caption", {"image": good}), ("bad", "b", {"image": bad})], tmp_path / "s")
    source = shard_source(tmp_path / "s", "image", context, processor)
    source.load(0, False, torch.Generator())
    with pytest.raises(MediaError) as caught:
        source.load(1, False, torch.Generator())
    assert (caught.value.reason, caught.value.path) == (
        "undecodable",
        f"{tmp_path / 's' / 'shard-000000.tar'}:00000001.jpg",
    )
    shard_writer.write_shards([("empty", "c", {"audio": empty})], tmp_path / "a")
    with pytest.raises(MediaError) as caught:
        shard_source(tmp_path / "a", "audio", context, processor).load(0, False, torch.Generator())
    assert (caught.value.reason, caught.value.path) == ("empty", f"{tmp_path / 'a' / 'shard-000000.tar'}:00000000.wav")
    with pytest.raises(MediaError, match="missing.*no video member"):
        shard_source(tmp_path / "s", "video", context, processor).load(0, False, torch.Generator())


def load_cli():
    spec = importlib.util.spec_from_file_location("pack_shards", REPO / "dataset" / "pack_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_cli_reports_skips_by_reason(world, tmp_path, capsys):
    media = tmp_path / "images"
    shutil.copytree(world.root / "images", media)
    (media / "img_00001.png").unlink()
    (media / "img_00003.png").unlink()
    (media / "img_00004.png").write_bytes(b"")
    (media / "img_00007.png").write_bytes(np.random.default_rng(1).bytes(500))
    (media / "img_00008.png").write_bytes((media / "img_00008.png").read_bytes()[:60])
    rows = json.loads(world.path("stage1/image").read_text())
    rows.insert(5, {"video_id": "img_00005.png"})
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps(rows))
    argv = ["--annotations", str(annotations), "--media-root", str(media), "--modality", "image"]
    argv += ["--out", str(tmp_path / "out"), "--max-per-shard", "4", "--image-size", "16"]
    assert load_cli().main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"written: 7 samples in 2 shards ({tmp_path / 'out'})",
        "skipped: 6 (missing: 2, undecodable: 2, bad row (no caption): 1, empty: 1)",
        "first skipped: img_00001.png (missing), img_00003.png (missing), img_00004.png (empty), "
        "row 5 (bad row (no caption)), img_00007.png (undecodable)",
    ]
    assert sorted(path.name for path in (tmp_path / "out").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
