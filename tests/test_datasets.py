"""Dataset builders on the synthetic world: lengths, shapes, exact token ids and labels, VALOR opts, bad rows."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import chatbridge.data.datasets  # noqa: F401  (registers the dataset builders)
from chatbridge.config import DatasetConfig, FaithfulConfig, ProcessorConfig
from chatbridge.data.batching import batch_samples
from chatbridge.data.collate import IGNORE_INDEX, encode_conversation, encode_stage1
from chatbridge.data.datasets.base import DataContext, SkipCounter
from chatbridge.data.datasets.valor_opts import datasets_from_valor_opts
from chatbridge.data.processors.audio import build_beats_fbank
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.processors.video import build_video_frames
from chatbridge.data.synthetic import SCALES, ensure_world
from chatbridge.data.templates import render_caption
from chatbridge.models.llm import load_tokenizer
from chatbridge.models.tiny_llm import write_tiny_llama_folder
from chatbridge.registry import DATASETS

QUERIES = {"image": 3, "video": 4, "audio": 5}
"""Slots per block; different per modality so that a block wired to the wrong modality shows."""
IMAGE_SIZE = 16
SHAPES = {"image": (3, IMAGE_SIZE, IMAGE_SIZE), "video": (4, 3, IMAGE_SIZE, IMAGE_SIZE), "audio": (1, 1024, 64)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SCALES["tiny"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_tiny_llama_folder(tmp_path_factory.mktemp("llm") / "tiny"))


@pytest.fixture(scope="module")
def context(tokenizer):
    return DataContext(tokenizer, lambda modality, n: QUERIES[modality], 512, FaithfulConfig(), seed=0)


def small(cfg: DatasetConfig, **changes) -> DatasetConfig:
    """`cfg` with 16-pixel media (fast) and any other field changes."""
    return dataclasses.replace(cfg, processor=dataclasses.replace(cfg.processor, image_size=IMAGE_SIZE), **changes)


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
            assert [modality for modality, _ in sample.media] == cfg.modalities
            assert [tuple(tensor.shape) for _, tensor in sample.media] == [SHAPES[m] for m in cfg.modalities]
            assert [length for _, length in sample.encoded.query_spans] == [QUERIES[m] for m in cfg.modalities]
            for start, length in sample.encoded.query_spans:
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
    assert [length for _, length in sample.encoded.query_spans] == [4, 5]


def test_video_with_background_audio_loads_both_files_of_one_id(world, context):
    cfg = world_configs(world)["synthetic_stage2_av_cap"]
    source = build("av", small(cfg, prompts=str(write_prompts(world.root / "annotations"))), context)
    video_id = source.media_id(1)
    (_, video), (_, audio) = source.load(1, False, seeded()).media
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
    batch = batch_samples(samples, tokenizer, "left", bos_mask_on_padded_rows=False)
    assert {m: tuple(p.shape) for m, p in batch.query_positions.items()} == {"video": (3, 4), "audio": (2, 5)}
    flat = batch.input_ids.flatten()
    positions = torch.cat([p.flatten() for p in batch.query_positions.values()])
    assert (flat[positions] == tokenizer.unk_token_id).all()
    assert len(set(positions.tolist())) == int((flat == tokenizer.unk_token_id).sum()) == 3 * 4 + 2 * 5
    videos = [tensor for sample in samples for modality, tensor in sample.media if modality == "video"]
    assert torch.equal(batch.media["video"], torch.stack(videos))
    rows = (batch.query_positions["video"][:, 0] // batch.input_ids.shape[1]).tolist()
    assert rows == [0, 1, 2]
    assert torch.equal(batch.media["audio"][1], samples[2].media[1][1])


def test_batch_refuses_media_of_different_shapes(world, context, tokenizer):
    configs = world_configs(world)
    small_images = build("a", configs["synthetic_stage1_image"], context)
    big = dataclasses.replace(configs["synthetic_stage1_image"], processor=ProcessorConfig(image_size=24))
    big_images = build("b", big, context)
    samples = [small_images.load(0, False, seeded()), big_images.load(1, False, seeded())]
    with pytest.raises(ValueError, match=r"image media of different shapes in one batch: \(3, 16, 16\) \(a\[0\]\)"):
        batch_samples(samples, tokenizer, "right", bos_mask_on_padded_rows=False)


def test_stage1_batch_is_right_padded(world, context, tokenizer):
    source = build("images", world_configs(world)["synthetic_stage1_image"], context)
    samples = [source.load(index, False, seeded()) for index in range(3)]
    batch = batch_samples(samples, tokenizer, "right", bos_mask_on_padded_rows=False)
    assert (batch.input_ids[:, 0] == tokenizer.bos_token_id).all()
    assert batch.query_positions["image"].tolist() == [
        [row * batch.input_ids.shape[1] + 1 + q for q in range(3)] for row in range(3)
    ]
    expected = encode_stage1(
        render_caption(json.loads(world.path("stage1/image").read_text())[2]["caption"]), tokenizer, 3, 512
    )
    assert batch.input_ids[2, 1 : 1 + len(expected.input_ids)].tolist() == expected.input_ids


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
