"""The evaluation runner: likelihood choice, resumption without recomputation, 2 ranks = 1 rank, the results table."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from chatbridge.config import TrainConfig
from chatbridge.config_apps import BenchmarkConfig, GenerationSettings
from chatbridge.config_loading import load_config
from chatbridge.data.templates import render_conversation
from chatbridge.data.tokenize import encode_conversation
from chatbridge.evaluation import runner, tasks
from chatbridge.evaluation.benchmarks import EvalItem
from chatbridge.evaluation.runner import evaluate, results_table
from chatbridge.inference.engine import InferenceEngine, Request
from chatbridge.inference.media import MediaFile, MediaReader
from chatbridge.models.llm import load_tokenizer
from chatbridge.models.loading import save_chatbridge_checkpoint
from chatbridge.synthetic.world import SCALES, ensure_world
from chatbridge.training.distributed import DistributedContext
from tests.conftest import REPO
from tests.fixtures.benchmark_files import write_csv, write_json
from tests.tiny_sizes import SMALL

SINGLE = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world") / "world", sizes=SCALES["tiny"]).root


@pytest.fixture
def engine(tiny_model, tiny_train_config, tiny_llm_dir) -> InferenceEngine:
    reader = MediaReader(tiny_train_config.processor, tiny_train_config.model)
    return InferenceEngine(tiny_model, load_tokenizer(tiny_llm_dir), reader, GenerationSettings(max_new_tokens=6))


def karpathy_file(folder: Path, images: list[str]) -> Path:
    """A Karpathy-split caption file (the official layout) over the given image names."""
    entries = [
        {"filename": name, "split": "test", "imgid": i, "sentences": [{"raw": "a red circle", "tokens": []}]}
        for i, name in enumerate(images)
    ]
    return write_json(folder, "dataset_tiny.json", {"images": entries, "dataset": "tiny"})


def caption_config(tmp_path: Path, world: Path, tiny_llm_dir: Path, output: str) -> TrainConfig:
    annotations = karpathy_file(tmp_path, sorted(p.name for p in (world / "images").glob("img_*.png")))
    options = [
        *SMALL,
        f"model.llm.path={tiny_llm_dir}",
        "model.checkpoint=null",
        f"evaluation.output_dir={tmp_path / output}",
        "evaluation.benchmarks.captions.task=captioning",
        "evaluation.benchmarks.captions.format=karpathy_caption",
        f"evaluation.benchmarks.captions.annotations={annotations}",
        f"evaluation.benchmarks.captions.image_root={world / 'images'}",
        "evaluation.benchmarks.captions.prompt=Describe the image briefly.",
        "evaluation.benchmarks.captions.metrics=[BLEU-4,CIDEr,ROUGE-L]",
        "evaluation.benchmarks.captions.batch_size=3",
        "generation.max_new_tokens=6",
    ]
    config = load_config(REPO / "eval_configs" / "chatbridge_tiny_eval.yaml", options, require_paths=False)
    config.evaluation.benchmarks = {"captions": config.evaluation.benchmarks["captions"]}  # only the one made here
    return config


def test_multiple_choice_picks_the_option_with_the_lowest_loss(engine, world):
    files = [MediaFile(world / "audios" / "aud_00000.wav", "audio")]
    item = EvalItem("clip", (("audio", "aud_00000.wav"),), choices=("one beep", "two beeps", "a dog"), answer_index=1)
    benchmark = BenchmarkConfig(task="multiple_choice", prompt="What do you hear?")
    [record] = tasks.choose_by_likelihood(engine, [item], [files], benchmark)
    alone = [engine.score([Request("What do you hear?", files)], [option]).item() for option in item.choices]
    assert record["losses"] == pytest.approx(alone, abs=1e-5)
    assert record["choice"] == min(range(3), key=alone.__getitem__)
    assert record["prediction"] == item.choices[record["choice"]]


def test_a_dialogue_prompt_tokenises_like_a_training_conversation(engine, world):
    files = [MediaFile(world / "images" / "img_00000.png", "image")]
    item = EvalItem("d", (("image", "img_00000.png"),), history=(("what shape?", "A circle."),))
    prompt = tasks.dialogue_prompt(engine, item, files, "what colour?")
    messages = [
        {"from": "human", "value": "what shape?"},
        {"from": "gpt", "value": "A circle."},
        {"from": "human", "value": "what colour?"},
        {"from": "gpt", "value": "Red."},
    ]
    training = encode_conversation(render_conversation(("image",), messages), engine.tokenizer, [4], 500)
    assert training.input_ids[: len(prompt.encoded.input_ids)] == prompt.encoded.input_ids
    first_target_of_last_answer = (
        max(i for i, label in enumerate(training.labels) if label == -100 and i < len(prompt.encoded.input_ids)) + 1
    )
    assert first_target_of_last_answer == len(prompt.encoded.input_ids)


def test_an_interrupted_evaluation_resumes_without_recomputing(tmp_path, world, tiny_llm_dir, engine, monkeypatch):
    config = caption_config(tmp_path, world, tiny_llm_dir, "eval")
    [full] = evaluate(config, engine, SINGLE)
    predictions = tmp_path / "eval" / "captions" / "predictions.rank0.jsonl"
    lines = predictions.read_text().splitlines()
    # Killed mid-write in the second batch: 3 items complete, the 4th torn (batches of 3 keep the same composition on
    # resumption, so the tiny random LM's near-ties cannot tip differently in a differently padded batch).
    predictions.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    predicted: list[str] = []
    original = tasks.generate_answers

    def counting(engine, items, media, benchmark):
        predicted.extend(item.item_id for item in items)
        return original(engine, items, media, benchmark)

    monkeypatch.setitem(
        runner.TASKS._builders, "captioning", lambda: tasks.Task(("CIDEr",), counting, tasks.score_captions)
    )
    [resumed] = evaluate(config, engine, SINGLE)
    assert sorted(predicted) == sorted(json.loads(line)["id"] for line in lines[3:])  # only the unfinished ones
    assert resumed.metrics == full.metrics and resumed.scored == full.scored == len(lines)


def _evaluate_rank(rank: int, world_size: int, port: int, config: TrainConfig) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from chatbridge.inference.engine import load_engine
    from chatbridge.training.distributed import cleanup_distributed, setup_distributed

    context = setup_distributed("cpu")
    evaluate(config, load_engine(config, context.device), context)
    cleanup_distributed()


def test_two_ranks_give_the_metrics_of_one(tmp_path, world, tiny_llm_dir, tiny_model, tiny_config):
    save_chatbridge_checkpoint(tiny_model, TrainConfig(model=tiny_config), tmp_path / "ckpt")
    config = caption_config(tmp_path, world, tiny_llm_dir, "one")
    config.model = dataclasses.replace(config.model, checkpoint=str(tmp_path / "ckpt"))
    # One prompt per batch: each rank's batches hold other items, and the tiny random LM's near-ties could tip
    # differently in a differently padded batch; what is tested here is the sharding and gathering.
    config.evaluation.benchmarks["captions"].batch_size = 1
    _evaluate_rank(0, 1, 0, config)
    two = dataclasses.replace(
        config, evaluation=dataclasses.replace(config.evaluation, output_dir=str(tmp_path / "two"))
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_evaluate_rank, args=(2, port, two), nprocs=2, join=True, start_method="spawn")
    one_metrics = json.loads((tmp_path / "one" / "captions" / "metrics.json").read_text())
    two_metrics = json.loads((tmp_path / "two" / "captions" / "metrics.json").read_text())
    assert len(list((tmp_path / "two" / "captions").glob("predictions.rank*.jsonl"))) == 2
    assert two_metrics["metrics"] == one_metrics["metrics"] and two_metrics["scored"] == one_metrics["scored"]


def test_items_with_unusable_media_are_counted_not_scored(tmp_path, world, tiny_llm_dir, engine):
    config = caption_config(tmp_path, world, tiny_llm_dir, "eval")
    names = ["img_00000.png", "missing.png"]
    annotations = karpathy_file(tmp_path, names)
    benchmark = dataclasses.replace(config.evaluation.benchmarks["captions"], annotations=str(annotations))
    config.evaluation.benchmarks["captions"] = benchmark
    [result] = evaluate(config, engine, SINGLE)
    assert result.scored == 1 and result.skipped == {"unusable media": 1}


def test_results_table_marks_held_in_and_held_out():
    results = [
        runner.BenchmarkResult("msrvtt_qa", "open_qa", False, 10, {}, {"exact_match": 0.5}),
        runner.BenchmarkResult(
            "clotho", "captioning", True, 5, {"unusable media": 2}, {"CIDEr": 0.25, "skipped: SPICE": "no models"}
        ),
    ]
    assert results_table(results).splitlines()[2:] == [
        "| msrvtt_qa | open_qa | held-in | 10 | exact_match 50.0 |",
        "| clotho | captioning | held-out | 5 (+2 skipped) | CIDEr 25.0, skipped: SPICE: no models |",
    ]


def test_an_esc50_file_feeds_classification_by_generation(tmp_path, world, engine):
    rows = [["aud_00000.wav", 1, 0, "dog", True, 1, "A"], ["aud_00001.wav", 1, 1, "rooster", False, 2, "A"]]
    meta = write_csv(
        tmp_path, "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows
    )
    benchmark = BenchmarkConfig(
        task="classification",
        format="esc50",
        annotations=str(meta),
        audio_root=str(world / "audios"),
        prompt="Which sound is this: dog or rooster?",
    )
    items = runner.read_items(benchmark, "evaluation.benchmarks.esc50")
    records = tasks.classify_by_generation(engine, items, [runner.media_files(i, benchmark) for i in items], benchmark)
    assert [r["id"] for r in records] == ["aud_00000.wav", "aud_00001.wav"]
    assert all(r["choice"] in (None, 0, 1) for r in records)


@pytest.mark.parametrize("path", sorted((REPO / "eval_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_benchmarks_name_known_readers_and_tasks(path):
    from chatbridge.evaluation.benchmarks import READERS
    from chatbridge.registry import TASKS

    for benchmark in load_config(path, require_paths=False).evaluation.benchmarks.values():
        assert benchmark.format in READERS and benchmark.task in TASKS
