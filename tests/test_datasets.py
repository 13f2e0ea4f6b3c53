"""Dataset builders on the synthetic world: lengths, shapes, exact token ids and labels, VALOR opts, bad rows,
and the shipped tiny configs' datasets built and pickled without a model."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import chatbridge.data.datasets  # noqa: F401  (registers the dataset builders)
from chatbridge.config import (
    ConnectorConfig,
    DatasetConfig,
    EncoderConfig,
    ModelConfig,
    ProcessorConfig,
    RouteConfig,
    resolve_processor,
)
from chatbridge.config_loading import load_config
from chatbridge.data.batch import IGNORE_INDEX
from chatbridge.data.collate import collate
from chatbridge.data.datasets.base import DataContext, SkipCounter
from chatbridge.data.datasets.valor_opts import datasets_from_valor_opts
from chatbridge.data.mixture import build_datasets
from chatbridge.data.processors.audio import build_beats_fbank
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.processors.video import build_video_frames
from chatbridge.data.templates import render_caption
from chatbridge.data.tokenize import encode_conversation, encode_stage1
from chatbridge.models.llm import load_tokenizer
from chatbridge.registry import DATASETS
from chatbridge.synthetic.world import SCALES, ensure_world

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIGS = {
    "stage1": REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml",
    "stage2": REPO / "instructiontuning_configs" / "chatbridge_tiny_instructtuning.yaml",
}
QUERIES = {"image": 3, "video": 4, "audio": 5}
"""Slots per block; different per modality so that a block wired to the wrong modality shows."""
IMAGE_SIZE = 16
SHAPES = {"image": (3, IMAGE_SIZE, IMAGE_SIZE), "video": (4, 3, IMAGE_SIZE, IMAGE_SIZE), "audio": (1, 1024, 64)}
CLIP = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
PREPROCESSING: dict[str, dict[str, Any]] = {
    "image": {"image_processor": "clip_image", **CLIP},
    "video": {"video_processor": "video_frames", **CLIP},
    "audio": {
        "audio_processor": "beats_fbank",
        "sample_rate": 16000,
        "num_mel_bins": 64,
        "fbank_mean": 15.41663,
        "fbank_std": 6.55582,
    },
}
"""What the stub encoder dictates: EVA's and BEATs' processors and statistics, any image size."""


@dataclass
class StubEncoderConfig(EncoderConfig):
    """An encoder config answering the data layer's questions (`QUERIES[modality]` tokens per item); no network."""

    name: str = "stub"

    def output_width(self) -> int:
        return 8

    def num_tokens(self, modality: str, item_shape: tuple[int, ...]) -> int:
        return QUERIES[modality]

    def preprocessing(self, modality: str) -> dict[str, Any]:
        return PREPROCESSING[modality]


@dataclass
class StubConnectorConfig(ConnectorConfig):
    """One soft token per encoder token of an item, whatever the number of items."""

    name: str = "stub"

    def output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        return tokens_per_item


MODEL = ModelConfig(
    encoders={"stub": StubEncoderConfig()},
    routes={modality: RouteConfig(encoder="stub") for modality in QUERIES},
    connector=StubConnectorConfig(),
    max_txt_len=512,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SCALES["tiny"])


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    return load_tokenizer(tiny_llm_dir)


@pytest.fixture(scope="module")
def context(tokenizer):
    return DataContext(tokenizer, MODEL)


def resolved(processor: ProcessorConfig, modalities: list[str]) -> ProcessorConfig:
    """`processor` with what the (stub) encoders dictate filled in, as `load_config` does for a YAML's datasets."""
    return resolve_processor(MODEL, processor, modalities, "test")


def small(cfg: DatasetConfig, **changes) -> DatasetConfig:
    """`cfg` with 16-pixel media (fast), its processor resolved, and any other field changes."""
    processor = resolved(dataclasses.replace(cfg.processor, image_size=IMAGE_SIZE), cfg.modalities)
    return dataclasses.replace(cfg, processor=processor, **changes)


def world_configs(world) -> dict[str, DatasetConfig]:
    configs = {
        **datasets_from_valor_opts(world.path("opts_stage1")),
        **datasets_from_valor_opts(world.path("opts_stage2")),
    }
    return {name: small(cfg) for name, cfg in configs.items()}


def build(name: str, cfg: DatasetConfig, context: DataContext):
    return DATASETS.get(cfg.builder)(name, cfg, context)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def supervised_segments(tokenizer, labels: list[int]) -> list[str]:
    """Decoded runs of consecutive supervised labels."""
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tokenizer.sp_model.decode(current))
            current = []
    return runs


def test_builders_are_registered():
    assert {"caption_json", "multis_json", "caption_shards"} <= set(DATASETS.names())


def test_every_world_dataset_loads(world, context):
    for name, cfg in world_configs(world).items():
        source = build(name, cfg, context)
        assert len(source) == world.counts[name.removeprefix("synthetic_").replace("_", "/", 1)], name
        for index, train in ((0, True), (len(source) - 1, False)):
            sample = source.load(index, train, seeded(index))
            assert (sample.source, sample.index) == (name, index)
            assert [medium.modality for medium in sample.media] == cfg.modalities
            assert [tuple(medium.tensor.shape) for medium in sample.media] == [SHAPES[m] for m in cfg.modalities]
            assert [length for _, length in sample.encoded.media_spans] == [QUERIES[m] for m in cfg.modalities]
            for start, length in sample.encoded.media_spans:
                assert sample.encoded.input_ids[start : start + length] == [context.tokenizer.unk_token_id] * length


def test_stage1_sample_is_queries_then_caption(world, context, tokenizer):
    cfg = world_configs(world)["synthetic_stage1_image"]
    source = build("images", cfg, context)
    caption = json.loads(world.path("stage1/image").read_text())[0]["desc"]
    sample = source.load(0, True, seeded())
    text_ids = tokenizer.encode(render_caption(caption), add_special_tokens=False)
    assert sample.encoded.input_ids == [tokenizer.unk_token_id] * 3 + text_ids
    assert sample.encoded.labels == [IGNORE_INDEX] * 3 + text_ids
    assert tokenizer.sp_model.decode(text_ids) == caption.lower() + "\n"


def write_prompts(folder: Path) -> Path:
    """One template per key, so the rendered text is known."""
    prompts = {"ti-shortqa": ["Answer: <QUESTION>"], "tva-cap": ["Describe the video and the audio."]}
    path = folder / "one_prompt.json"
    path.write_text(json.dumps(prompts))
    return path


def test_stage2_qa_ids_and_labels(world, context, tokenizer, tmp_path):
    cfg = small(world_configs(world)["synthetic_stage2_image_qa"], prompts=str(write_prompts(tmp_path)))
    row = json.loads(world.path("stage2/image_qa").read_text())[0]
    sample = build("qa", cfg, context).load(0, True, seeded())
    text = (
        f"###Human: Given following image: <query>.###Human: Answer: {row['question']}###Assistant:{row['answer']}\n###"
    )
    assert sample.encoded == encode_conversation(text, tokenizer, [3], 512)
    assert supervised_segments(tokenizer, sample.encoded.labels) == [f"{row['answer']}\n###"]
    prompt_ids = [
        i for i, label in zip(sample.encoded.input_ids, sample.encoded.labels, strict=True) if label == IGNORE_INDEX
    ]
    assert tokenizer.sp_model.decode([i for i in prompt_ids if i != tokenizer.unk_token_id]).replace(" ", "") == (
        f"###Human:Givenfollowingimage:.###Human:Answer:{row['question']}###Assistant:".replace(" ", "")
    )


def test_stage2_conversation_supervises_every_answer_only(world, context, tokenizer):
    row = json.loads(world.path("stage2/av_conv").read_text())[0]
    sample = build("av", world_configs(world)["synthetic_stage2_av_conv"], context).load(0, True, seeded())
    answers = [message["value"] for message in row["conversations"] if message["from"] == "gpt"]
    assert supervised_segments(tokenizer, sample.encoded.labels) == [f"{answer}###" for answer in answers]
    assert [length for _, length in sample.encoded.media_spans] == [4, 5]


def test_video_with_background_audio_loads_both_files_of_one_id(world, context):
    cfg = world_configs(world)["synthetic_stage2_av_cap"]
    source = build("av", small(cfg, prompts=str(write_prompts(world.root / "annotations"))), context)
    video_id = source.media_id(1)
    video, audio = [medium.tensor for medium in source.load(1, False, seeded()).media]
    assert torch.equal(video, build_video_frames(cfg.processor)(world.root / "frames" / video_id, False))
    assert torch.equal(audio, build_beats_fbank(cfg.processor)(world.root / "audios" / f"{video_id}.wav", False))


def test_caption_list_pick_is_seeded_and_first_at_evaluation(world, context, tokenizer):
    rows = json.loads(world.path("stage1/image").read_text())
    assert isinstance(rows[9]["desc"], list)
    source = build("images", world_configs(world)["synthetic_stage1_image"], context)
    captions = rows[9]["desc"]

    def caption_of(train: bool, seed: int) -> str:
        ids = source.load(9, train, seeded(seed)).encoded.input_ids[3:]
        return tokenizer.sp_model.decode(ids).removesuffix("\n")

    assert caption_of(False, 0) == captions[0]
    picks = [caption_of(True, seed) for seed in range(12)]
    assert picks == [caption_of(True, seed) for seed in range(12)]
    assert picks == [captions[int(torch.randint(3, (), generator=seeded(seed)))] for seed in range(12)]
    assert len(set(picks)) > 1


def test_missing_media_raises_instead_of_zeros(world, context, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(world.root / "images", root)
    (root / "img_00000.png").unlink()
    source = build("images", small(world_configs(world)["synthetic_stage1_image"], image_root=str(root)), context)
    with pytest.raises(MediaError) as caught:
        source.load(0, True, seeded())
    assert caught.value.reason == "missing"
    assert caught.value.path == str(root / "img_00000.png")


# ----------------------------------------------------------------------------------------------- VALOR opts


def test_valor_stage1_opts(world):
    root = world.root
    expected = {
        "synthetic_stage1_image": DatasetConfig(
            builder="caption_json",
            modalities=["image"],
            task="caption",
            annotations=str(root / "annotations/stage1/image.json"),
            image_root=str(root / "images"),
            weight=12.0,
            batch_size=8,
            processor=ProcessorConfig(image_size=64),
        ),
        "synthetic_stage1_video": DatasetConfig(
            builder="caption_json",
            modalities=["video"],
            task="caption",
            annotations=str(root / "annotations/stage1/video.json"),
            video_root=str(root / "frames"),
            weight=6.0,
            batch_size=8,
            processor=ProcessorConfig(image_size=64, num_frames=4),
        ),
        "synthetic_stage1_audio": DatasetConfig(
            builder="caption_json",
            modalities=["audio"],
            task="caption",
            annotations=str(root / "annotations/stage1/audio.json"),
            audio_root=str(root / "audios"),
            weight=8.0,
            batch_size=8,
            processor=ProcessorConfig(image_size=64, num_mel_bins=64, target_length=1024, num_audio_segments=1),
        ),
    }
    assert datasets_from_valor_opts(root / "opts_stage1.json") == expected


def test_valor_stage2_opts(world):
    root = world.root
    image = ProcessorConfig(image_size=64)
    video = ProcessorConfig(image_size=64, num_frames=4)
    audio = ProcessorConfig(image_size=64, num_mel_bins=64, target_length=1024, num_audio_segments=1)
    both = ProcessorConfig(image_size=64, num_frames=4, num_mel_bins=64, target_length=1024, num_audio_segments=1)
    prompts = str(root / "task_prompt.json")
    rows = {
        # name: (modalities, task, prompts, weight, batch size, processor)
        "image_cap": (["image"], "caption", prompts, 12.0, 8, image),
        "image_qa": (["image"], "shortqa", prompts, 34.0, 8, image),
        "image_conv": (["image"], "conv", None, 12.0, 4, image),
        "video_cap": (["video"], "caption", prompts, 6.0, 8, video),
        "video_qa": (["video"], "shortqa", prompts, 30.0, 8, video),
        "video_conv": (["video"], "conv", None, 6.0, 4, video),
        "audio_cap": (["audio"], "caption", prompts, 8.0, 8, audio),
        "audio_qa": (["audio"], "shortqa", prompts, 24.0, 8, audio),
        "audio_conv": (["audio"], "conv", None, 8.0, 4, audio),
        "av_cap": (["video", "audio"], "caption", prompts, 4.0, 8, both),
        "av_conv": (["video", "audio"], "conv", None, 4.0, 4, both),
    }
    folders = {"image": "images", "video": "frames", "audio": "audios"}
    expected = {
        f"synthetic_stage2_{name}": DatasetConfig(
            builder="multis_json",
            modalities=modalities,
            task=task,
            annotations=str(root / f"annotations/stage2/{name}.json"),
            prompts=prompt_file,
            weight=weight,
            batch_size=batch_size,
            processor=processor,
            **{f"{m}_root": str(root / folders[m]) for m in modalities},
        )
        for name, (modalities, task, prompt_file, weight, batch_size, processor) in rows.items()
    }
    assert datasets_from_valor_opts(root / "opts_stage2.json") == expected


def write_opts(folder: Path, task: str, datatype: str = "image") -> Path:
    group = {"datasets": [{"name": "d", "txt": "a.json", "video": "v", "datatype": datatype}], "task": task}
    path = folder / "opts.json"
    path.write_text(json.dumps({"data_cfg": {"train": [{**group, "steps": 10, "batch_size": 4}]}}))
    return path


def test_valor_task_alternatives_become_datasets(tmp_path):
    configs = datasets_from_valor_opts(write_opts(tmp_path, "ti-cap%ti-shortqa"), prompts="p.json")
    assert {name: (cfg.task, cfg.weight, cfg.prompts) for name, cfg in configs.items()} == {
        "d--ti-cap": ("caption", 5.0, "p.json"),
        "d--ti-shortqa": ("shortqa", 5.0, "p.json"),
    }


def test_valor_stage1_ti_on_video_is_video(tmp_path):
    cfg = datasets_from_valor_opts(write_opts(tmp_path, "ti", "video"))["d"]
    assert (cfg.builder, cfg.modalities, cfg.video_root) == ("caption_json", ["video"], str(tmp_path / "v"))


@pytest.mark.parametrize(
    ("task", "datatype", "problem"),
    [
        ("tx-cap", "image", "unknown task code 'tx'"),
        ("ti-chat", "image", "unknown task 'ti-chat'"),
        ("tv-cap", "image", "task code 'tv' does not fit datatype 'image'"),
        ("tva", "video", "stage-1 captioning takes one modality"),
    ],
)
def test_valor_bad_codes_name_the_group(tmp_path, task, datatype, problem):
    path = write_opts(tmp_path, task, datatype)
    with pytest.raises(ValueError, match="data_cfg.train\\[0\\] \\(task '" + task + "'\\)") as caught:
        datasets_from_valor_opts(path)
    assert problem in str(caught.value)


# ----------------------------------------------------------------------------------------------- bad rows


def write_rows(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    return path


BAD_CAPTION_ROWS = [
    {"video_id": "img_00000.png", "caption": "a red circle"},
    {"caption": "no id"},
    {"video_id": "x", "desc": "  "},
    "a bare string",
    {"video_id": "y"},
    {"video_id": "z", "caption": ["fine", 3]},
]


def test_malformed_caption_rows_fail_with_file_and_row(world, context, tmp_path):
    path = write_rows(tmp_path, BAD_CAPTION_ROWS)
    cfg = small(world_configs(world)["synthetic_stage1_image"], annotations=str(path))
    with pytest.raises(ValueError) as caught:
        build("images", cfg, context)
    assert str(caught.value) == (
        f"{path}: row 1: missing id: no video_id or image_id (5 malformed rows in total; "
        "set skip_bad_rows: true to drop and count them)"
    )


def test_malformed_caption_rows_are_counted_when_skipped(world, context, tmp_path):
    path = write_rows(tmp_path, BAD_CAPTION_ROWS)
    cfg = small(world_configs(world)["synthetic_stage1_image"], annotations=str(path), skip_bad_rows=True)
    source = build("images", cfg, context)
    assert len(source) == 1
    assert source.bad_rows == {"missing id": 1, "no caption": 3, "not an object": 1}


def test_malformed_conversations(world, context, tmp_path):
    human, gpt = {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}
    rows = [
        {"image_id": "img_00000.png", "conversations": [human, gpt]},
        {"image_id": "a", "conversations": [gpt, human]},
        {"image_id": "b", "conversations": [human, {"from": "system", "value": "x"}]},
        {"image_id": "c", "conversations": []},
        {"image_id": "d", "conversations": [human, {"from": "gpt"}]},
    ]
    path = write_rows(tmp_path, rows)
    cfg = small(world_configs(world)["synthetic_stage2_image_conv"], annotations=str(path))
    with pytest.raises(ValueError, match="row 1: bad conversation: message 0 must be from 'human' \\(4 malformed"):
        build("conv", cfg, context)
    source = build("conv", dataclasses.replace(cfg, skip_bad_rows=True), context)
    assert (len(source), source.bad_rows) == (1, {"bad conversation": 4})


def test_malformed_qa_rows(world, context, tmp_path):
    rows = [
        {"image_id": "img_00000.png", "question": ["a?", "b?"], "answer": ["x", "y"]},
        {"image_id": "a", "question": ["a?", "b?"], "answer": ["x"]},
        {"image_id": "b", "question": "a?"},
    ]
    path = write_rows(tmp_path, rows)
    cfg = small(world_configs(world)["synthetic_stage2_image_qa"], annotations=str(path))
    with pytest.raises(ValueError, match="row 1: bad question/answer: 2 questions but 1 answers"):
        build("qa", cfg, context)
    source = build("qa", dataclasses.replace(cfg, skip_bad_rows=True), context)
    assert (len(source), source.bad_rows) == (1, {"bad question/answer": 2})


def test_prompted_task_needs_its_template_key(world, context, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"ti-cap": ["Describe."]}))
    cfg = small(world_configs(world)["synthetic_stage2_video_cap"], prompts=str(prompts))
    with pytest.raises(ValueError, match="has no templates 'tv-cap'"):
        build("video_cap", cfg, context)


# ----------------------------------------------------------------------------------------------- batching


def batch_samples(samples, tokenizer, bos_mask_on_padded_rows: bool = False):
    return collate(samples, tokenizer.pad_token_id, tokenizer.bos_token_id, bos_mask_on_padded_rows)


def test_batch_positions_point_at_placeholders_in_media_order(world, context, tokenizer):
    configs = world_configs(world)
    sources = [
        build(name, configs[name], context) for name in ("synthetic_stage2_av_conv", "synthetic_stage2_video_qa")
    ]
    samples = [
        sources[0].load(0, False, seeded()),
        sources[1].load(3, False, seeded()),
        sources[0].load(2, False, seeded()),
    ]
    batch = batch_samples(samples, tokenizer)
    assert {m: tuple(p.shape) for m, p in batch.soft_token_positions.items()} == {"video": (3, 4), "audio": (2, 5)}
    flat = batch.input_ids.flatten()
    positions = torch.cat([p.flatten() for p in batch.soft_token_positions.values()])
    assert (flat[positions] == tokenizer.unk_token_id).all()
    assert len(set(positions.tolist())) == int((flat == tokenizer.unk_token_id).sum()) == 3 * 4 + 2 * 5
    videos = [medium.tensor for sample in samples for medium in sample.media if medium.modality == "video"]
    assert torch.equal(batch.media["video"], torch.stack(videos))
    rows = (batch.soft_token_positions["video"][:, 0] // batch.input_ids.shape[1]).tolist()
    assert rows == [0, 1, 2]
    assert torch.equal(batch.media["audio"][1], samples[2].media[1].tensor)


def test_batch_refuses_media_of_different_shapes(world, context, tokenizer):
    configs = world_configs(world)
    small_images = build("a", configs["synthetic_stage1_image"], context)
    big_processor = resolved(ProcessorConfig(image_size=24), ["image"])
    big = dataclasses.replace(configs["synthetic_stage1_image"], processor=big_processor)
    big_images = build("b", big, context)
    samples = [small_images.load(0, False, seeded()), big_images.load(1, False, seeded())]
    message = r"image media of different shapes in one batch: \(3, 16, 16\) vs \(3, 24, 24\) \(a\[0\] vs b\[1\]\)"
    with pytest.raises(ValueError, match=message):
        batch_samples(samples, tokenizer)


def test_stage1_batch_is_left_padded(world, context, tokenizer):
    source = build("images", world_configs(world)["synthetic_stage1_image"], context)
    samples = [source.load(index, False, seeded()) for index in range(3)]
    batch = batch_samples(samples, tokenizer)
    width = batch.input_ids.shape[1]
    assert (batch.input_ids[:, 0] == tokenizer.bos_token_id).all()
    starts = [width - len(sample.encoded.input_ids) for sample in samples]  # [BOS][pad][content]
    assert batch.soft_token_positions["image"].tolist() == [
        [row * width + starts[row] + q for q in range(3)] for row in range(3)
    ]
    for row, start in enumerate(starts):
        assert batch.input_ids[row, 1:start].eq(tokenizer.pad_token_id).all()
        assert batch.attention_mask[row].tolist() == [1] + [0] * (start - 1) + [1] * (width - start)
    expected = encode_stage1(
        render_caption(json.loads(world.path("stage1/image").read_text())[2]["caption"]), tokenizer, 3, 512
    )
    assert batch.input_ids[2, starts[2] :].tolist() == expected.input_ids
    assert batch.labels[2, starts[2] :].tolist() == expected.labels


# ----------------------------------------------------------------------------------------------- skip counter


def test_skip_counter_report_and_health():
    counter = SkipCounter()
    counter.attempt("laion", 20)
    for _ in range(12):
        counter.record("laion", "missing", "/data/laion/a.jpg")
    for _ in range(7):
        counter.record("laion", "undecodable", "/data/laion/b.jpg")
    counter.attempt("audio")
    counter.attempt("audio")
    counter.record("audio", "too_short", "/data/a.wav")
    assert (
        counter.report()
        == "audio: 1 of 2 skipped (too_short: 1)\nlaion: 19 of 20 skipped (missing: 12, undecodable: 7)"
    )
    counter.check_health(min_attempts=21)
    with pytest.raises(RuntimeError) as caught:
        counter.check_health()
    assert str(caught.value) == (
        "dataset laion: 19 of 20 samples unusable (missing: 12, undecodable: 7); check image_root / video_root / "
        "audio_root and the ids in the annotations, e.g. missing '/data/laion/a.jpg'; undecodable '/data/laion/b.jpg'"
    )


# ----------------------------------------------------------------------------------------------- shipped tiny configs


class ModelFreePickler(pickle.Pickler):
    """A pickler that fails on any `torch.nn.Module`: what it pickles holds no model, not even part of one."""

    def persistent_id(self, obj: Any) -> None:
        if isinstance(obj, torch.nn.Module):
            raise AssertionError(f"a dataset holds a {type(obj).__name__} module")


def model_free_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    ModelFreePickler(buffer).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("stage", sorted(TINY_CONFIGS))
def test_tiny_config_datasets_build_without_a_model_and_pickle(world, tiny_llm_dir, stage):
    config = load_config(
        TINY_CONFIGS[stage], [f"synthetic.world={world.root}", f"model.llm.path={tiny_llm_dir}"], require_paths=True
    )
    sources = build_datasets(config, load_tokenizer(config.model.llm.path))
    assert sorted(sources) == sorted(config.datasets)
    for name, source in sources.items():
        copy = pickle.loads(model_free_pickle(source))
        assert (copy.name, len(copy)) == (name, len(source))
        assert copy.bos_mask_on_padded_rows == source.bos_mask_on_padded_rows
        for train in (True, False):
            original = source.load(0, train, seeded(5))
            again = copy.load(0, train, seeded(5))
            assert (again.source, again.index) == (original.source, original.index) == (name, 0)
            assert again.encoded == original.encoded, name
            modalities = config.datasets[name].modalities
            assert [m.modality for m in again.media] == [m.modality for m in original.media] == modalities
            for medium, expected in zip(again.media, original.media, strict=True):
                assert torch.equal(medium.tensor, expected.tensor), name
            # the slots each medium gets come from the config alone
            assert [length for _, length in original.encoded.media_spans] == [
                config.model.soft_tokens(m.modality, tuple(m.tensor.shape)) for m in original.media
            ]
