"""Evaluation tasks: how a benchmark's items become prompts, and how its predictions become numbers.

A task is two functions: `predict` turns a batch of items (with their media files) into one JSON-ready record per
item, through the inference engine; `score` turns every record of the benchmark into metrics. Records always hold
`id` and `prediction`; a task may add what its score needs (the option losses of a multiple-choice item).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chatbridge.config_apps import BenchmarkConfig
from chatbridge.evaluation.benchmarks import EvalItem
from chatbridge.evaluation.metrics import caption_metrics, exact_match, match_choice, vqa_accuracy
from chatbridge.inference.engine import InferenceEngine, Prompt, Request
from chatbridge.inference.media import MediaFile
from chatbridge.registry import TASKS

Record = dict[str, Any]
Metrics = dict[str, Any]
"""Metric name -> value (a float, or a text); a metric that cannot be computed here is reported as
`skipped: <name>` -> the reason; a task scoring question types adds `by_type`: type -> that type's metrics."""
Predict = Callable[[InferenceEngine, Sequence[EvalItem], Sequence[Sequence[MediaFile]], BenchmarkConfig], list[Record]]
Score = Callable[[Sequence[Record], dict[str, EvalItem], Sequence[str]], Metrics]


@dataclass(frozen=True)
class Task:
    """Attributes:
    default_metrics: what `score` reports when the benchmark names none.
    predict: (engine, items, their media files, benchmark) -> one record per item.
    score: (records, items by id, metrics) -> metric name -> value.
    """

    default_metrics: tuple[str, ...]
    predict: Predict
    score: Score


def question_of(item: EvalItem, benchmark: BenchmarkConfig) -> str:
    """The text sent for an item: the benchmark's prompt with the item's question filled in."""
    return benchmark.prompt.format(question=item.question or "")


def generate_answers(
    engine: InferenceEngine, items: Sequence[EvalItem], media: Sequence[Sequence[MediaFile]], benchmark: BenchmarkConfig
) -> list[Record]:
    """One generated answer per item, the whole batch at once."""
    requests = [Request(question_of(item, benchmark), list(files)) for item, files in zip(items, media, strict=True)]
    answers = engine.generate(requests)
    return [{"id": item.item_id, "prediction": answer} for item, answer in zip(items, answers, strict=True)]


# ----------------------------------------------------------------------------------------------- scores


def score_captions(records: Sequence[Record], items: dict[str, EvalItem], metrics: Sequence[str]) -> Metrics:
    """COCO caption metrics through pycocoevalcap (metrics it cannot compute here are listed as skipped), and
    `exact_match` with any reference where captions come from a closed set of phrasings (the synthetic world)."""
    predictions = {record["id"]: record["prediction"] for record in records}
    references = {key: list(items[key].references) for key in predictions}
    scores: Metrics = {}
    if "exact_match" in metrics:
        hits = [any(exact_match(predictions[key], ref) for ref in references[key]) for key in predictions]
        scores["exact_match"] = sum(hits) / len(hits)
    coco = [name for name in metrics if name != "exact_match"]
    if coco:
        result = caption_metrics(predictions, references, coco)
        scores |= {**result.scores, **{f"skipped: {name}": reason for name, reason in result.skipped.items()}}
    return scores


def score_answers(records: Sequence[Record], items: dict[str, EvalItem], metrics: Sequence[str]) -> Metrics:
    """VQA accuracy (the official rules over all annotators' answers) and/or exact match with any reference."""
    scores = {}
    if "vqa_accuracy" in metrics:
        values = [vqa_accuracy(r["prediction"], items[r["id"]].references) for r in records]
        scores["vqa_accuracy"] = sum(values) / len(values)
    if "exact_match" in metrics:
        hits = [any(exact_match(r["prediction"], ref) for ref in items[r["id"]].references) for r in records]
        scores["exact_match"] = sum(hits) / len(hits)
    return scores


def score_choices(records: Sequence[Record], items: dict[str, EvalItem], metrics: Sequence[str]) -> Metrics:
    """Accuracy of the chosen option; generated answers naming no option count as wrong (and are counted)."""
    chosen = [record.get("choice") for record in records]
    right = [choice == items[r["id"]].answer_index for choice, r in zip(chosen, records, strict=True)]
    return {"accuracy": sum(right) / len(right), "unmatched": sum(c is None for c in chosen) / len(chosen)}


# ----------------------------------------------------------------------------------------------- tasks


@TASKS.register("captioning")
def captioning() -> Task:
    """Image, video and audio captioning: the prompt is the instruction; BLEU-4, ROUGE-L, CIDEr (+ METEOR, SPICE)."""
    return Task(("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"), generate_answers, score_captions)


@TASKS.register("open_qa")
def open_qa() -> Task:
    """Open-ended QA (VQA-style: the 10-annotator accuracy; video QA: exact match)."""
    return Task(("vqa_accuracy", "exact_match"), generate_answers, score_answers)


def classify_by_generation(
    engine: InferenceEngine, items: Sequence[EvalItem], media: Sequence[Sequence[MediaFile]], benchmark: BenchmarkConfig
) -> list[Record]:
    """Generate an answer and map it to the option it names (the prompt should list the options)."""
    records = generate_answers(engine, items, media, benchmark)
    for record, item in zip(records, items, strict=True):
        record["choice"] = match_choice(record["prediction"], item.choices)
    return records


@TASKS.register("classification")
def classification() -> Task:
    """Classification by generation (ESC-50: "what sound is this?"), scored by the option the answer names."""
    return Task(("accuracy",), classify_by_generation, score_choices)


def choose_by_likelihood(
    engine: InferenceEngine, items: Sequence[EvalItem], media: Sequence[Sequence[MediaFile]], benchmark: BenchmarkConfig
) -> list[Record]:
    """Score every option as the answer with the training loss and pick the lowest (no generation)."""
    requests, options = [], []
    for item, files in zip(items, media, strict=True):
        requests += [Request(question_of(item, benchmark), list(files))] * len(item.choices)
        options += list(item.choices)
    losses = engine.score(requests, options).tolist()
    records, start = [], 0
    for item in items:
        mine = losses[start : start + len(item.choices)]
        start += len(item.choices)
        choice = int(torch.tensor(mine).argmin())
        records.append({"id": item.item_id, "prediction": item.choices[choice], "choice": choice, "losses": mine})
    return records


@TASKS.register("multiple_choice")
def multiple_choice() -> Task:
    """Likelihood-based multiple choice: the option with the lowest per-token loss is the answer."""
    return Task(("accuracy",), choose_by_likelihood, score_choices)


def dialogue_prompt(engine: InferenceEngine, item: EvalItem, files: Sequence[MediaFile], question: str) -> Prompt:
    """The dialogue so far as earlier turns (each answer closed as training closes it), then the question."""
    media = engine.encode_media(files)
    template = engine.template
    modalities = [medium.modality for medium in media]
    text = ""
    for number, (asked, answered) in enumerate(item.history):
        text += template.render_turn(modalities if number == 0 else (), asked, number == 0) + answered + template.stop
    text += template.render_turn(() if item.history else modalities, question, not item.history)
    return engine.encode_text(text, media)


def answer_dialogue(
    engine: InferenceEngine, items: Sequence[EvalItem], media: Sequence[Sequence[MediaFile]], benchmark: BenchmarkConfig
) -> list[Record]:
    """The next answer of each dialogue, generated after its history (AVSD)."""
    prompts = [
        dialogue_prompt(engine, item, files, question_of(item, benchmark))
        for item, files in zip(items, media, strict=True)
    ]
    answers = engine.generate_prompts(prompts)
    return [{"id": item.item_id, "prediction": answer} for item, answer in zip(items, answers, strict=True)]


@TASKS.register("dialogue")
def dialogue() -> Task:
    """Audio-visual dialogue: the answer to the last question given the history, scored like captions."""
    return Task(("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"), answer_dialogue, score_captions)
