"""The synthetic world's held-out files as benchmarks: reading, per-type scores against chance, the results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatbridge.errors import UserError
from chatbridge.evaluation.benchmarks import READERS
from chatbridge.evaluation.runner import BenchmarkResult, results_table
from chatbridge.evaluation.synthetic_world import score_typed_answers, world_captions, world_qa
from chatbridge.evaluation.tasks import score_captions

ROWS = [
    {"question_id": "q0", "video_id": "v0", "audio": "v0", "type": "shape+count", "instruction": "what shape and how "
     "many beeps?", "answer": "circle, three", "slots": ["shape", "count"], "slot_answers": ["circle", "three"]},
    {"question_id": "q1", "video_id": "v1", "audio": "v1", "type": "shape+count", "instruction": "what shape and how "
     "many beeps?", "answer": "square, two", "slots": ["shape", "count"], "slot_answers": ["square", "two"]},
    {"question_id": "q2", "video_id": "v2", "audio": "v2", "type": "yes_no", "instruction": "is it red and loud?",
     "answer": "yes", "slots": ["yes_no"], "slot_answers": ["yes"]},
    {"question_id": "q3", "video_id": "v3", "audio": "v3", "type": "yes_no", "instruction": "is it blue and loud?",
     "answer": "no", "slots": ["yes_no"], "slot_answers": ["no"]},
]  # fmt: skip
TYPES = {
    "shape+count": {"slots": ["shape", "count"], "questions": 2, "slot_chance": [1 / 3, 1 / 4], "chance": 1 / 12,
                    "mean_slot_chance": 7 / 24},
    "yes_no": {"slots": ["yes_no"], "questions": 2, "slot_chance": [0.5], "chance": 0.5, "mean_slot_chance": 0.5,
               "answers": {"no": 1, "yes": 1}},
}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Path:
    (tmp_path / "annotations" / "eval").mkdir(parents=True)
    (tmp_path / "annotations" / "eval" / "tva_qa.json").write_text(json.dumps(ROWS))
    caption_rows = [{"audio": "a0", "instruction": "Describe the sound.", "caption": ["two low beeps", "two beeps"]}]
    (tmp_path / "annotations" / "eval" / "audio_cap.json").write_text(json.dumps(caption_rows))
    manifest = {
        "files": {"eval/tva_qa": "annotations/eval/tva_qa.json", "eval/audio_cap": "annotations/eval/audio_cap.json"},
        "question_types": {"eval/tva_qa": TYPES},
    }
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    return tmp_path


def test_reading_a_joint_file_keeps_media_order_types_and_chance(world: Path) -> None:
    items = READERS["world_qa"](world / "annotations/eval/tva_qa.json", world / "MANIFEST.json")
    assert [item.item_id for item in items] == ["q0", "q1", "q2", "q3"]
    assert items[0].media == (("video", "v0"), ("audio", "v0"))
    assert items[0].question == "what shape and how many beeps?" and items[0].references == ("circle, three",)
    assert (items[0].question_type, items[0].chance, items[0].slot_chance) == ("shape+count", 1 / 12, 7 / 24)
    assert items[3].chance == 0.5
    assert world_qa(world / "annotations/eval/tva_qa.json")[0].chance is None  # no manifest: no chance levels


def test_per_type_scores_match_hand_counts(world: Path) -> None:
    items = {item.item_id: item for item in world_qa(world / "annotations/eval/tva_qa.json", world / "MANIFEST.json")}
    predictions = {"q0": "circle, three", "q1": "square, four.", "q2": "Yes", "q3": "yes"}
    records = [{"id": key, "prediction": value} for key, value in predictions.items()]
    metrics = score_typed_answers(records, items, ["accuracy", "slot_accuracy", "mean_over_types"])
    joint, yes_no = metrics["by_type"]["shape+count"], metrics["by_type"]["yes_no"]
    assert (joint["accuracy"], joint["slot_accuracy"]) == (0.5, 0.75)  # q1: shape right, count wrong
    assert (yes_no["accuracy"], yes_no["slot_accuracy"]) == (0.5, 0.5)
    assert (joint["chance"], joint["slot_chance"], yes_no["answers"]) == (1 / 12, 7 / 24, "1 yes / 1 no")
    assert metrics["accuracy"] == 0.5 and metrics["slot_accuracy"] == (1 + 0.5 + 1 + 0) / 4
    assert metrics["mean_over_types"] == (0.75 + 0.5) / 2
    assert "chance_mean_over_types" not in metrics  # not asked for


def test_results_table_lists_each_type_with_its_chance(world: Path) -> None:
    items = {item.item_id: item for item in world_qa(world / "annotations/eval/tva_qa.json", world / "MANIFEST.json")}
    records = [{"id": key, "prediction": items[key].references[0]} for key in items]
    metrics = score_typed_answers(records, items, ["mean_over_types", "chance_mean_over_types"])
    assert metrics["chance_mean_over_types"] == (7 / 24 + 0.5) / 2
    table = results_table([BenchmarkResult("video_audio_qa", "typed_qa", True, 4, {}, metrics)])
    assert "| video_audio_qa | typed_qa | held-out | 4 | mean_over_types 100.0, chance_mean_over_types 39.6 |" in table
    assert "| shape+count | 2 | 100.0 | 100.0 | 8.3 / 29.2 |" in table
    assert "| yes_no (1 yes / 1 no) | 2 | 100.0 | 100.0 | 50.0 / 50.0 |" in table


def test_caption_exact_match_accepts_any_reference_phrasing(world: Path) -> None:
    items = {item.item_id: item for item in world_captions(world / "annotations/eval/audio_cap.json")}
    assert items["a0"].media == (("audio", "a0"),) and items["a0"].references == ("two low beeps", "two beeps")
    assert score_captions([{"id": "a0", "prediction": "Two beeps."}], items, ["exact_match"]) == {"exact_match": 1.0}
    assert score_captions([{"id": "a0", "prediction": "two high beeps"}], items, ["exact_match"]) == {
        "exact_match": 0.0
    }


def test_a_type_the_manifest_does_not_declare_names_the_row(world: Path) -> None:
    rows = [*ROWS, {**ROWS[0], "question_id": "q4", "type": "colour+pitch"}]
    (world / "annotations/eval/tva_qa.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"tva_qa.json\[4\]: type 'colour\+pitch' is not declared"):
        world_qa(world / "annotations/eval/tva_qa.json", world / "MANIFEST.json")
