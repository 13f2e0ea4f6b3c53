"""Metrics: caption scores equal pycocoevalcap's own, the Python tokenizer equals PTBTokenizer on a caption corpus,
VQA accuracy follows the official rules, and the small accuracies score what they claim."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from chatbridge.evaluation import metrics
from chatbridge.evaluation.metrics import (
    NO_JAVA,
    NO_SPICE_MODELS,
    accuracy,
    caption_metrics,
    exact_match,
    match_choice,
    normalize_vqa_answer,
    ptb_tokenize_python,
    slot_accuracy,
    vqa_accuracy,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime (PTBTokenizer, METEOR)")

REFERENCES = {
    "391895": [
        "A man with a red helmet on a small moped on a dirt road. ",
        "Man riding a motor bike on a dirt road on the countryside.",
        "A man riding on the back of a motorcycle.",
        "A dirt path with a young person on a motor bike rests to the foreground of a verdant area.",
        "A man in a red shirt and a red hat is on a motorcycle on a hill side.",
    ],
    "522418": [
        "A woman wearing a net on her head cutting a cake. ",
        "A woman cutting a large white sheet cake.",
        "A woman wearing a hair net cutting a large sheet cake.",
    ],
    "184613": [
        "A child holding a flowered umbrella and petting a yak.",
        "A young man holding an umbrella next to a herd of cattle.",
        "a young boy barefoot holding an umbrella touching the horn of a cow",
        "A boy's holding an umbrella (it's flowered) while touching a cow's horn!",
    ],
    "318219": [
        "A young boy standing in front of a computer keyboard.",
        'A little boy wearing headphones and looking at a computer monitor; he\'s "busy"',
    ],
    "554625": [
        "A person is riding a horse-drawn carriage down the street -- in the U.S.",
        "Two horses pull a cart, while people don't seem to notice.",
        "A cart pulled by 2 brown horses at 5 p.m.",
        "Horses pulling a carriage on a city street.",
    ],
    "397133": [
        "A man is in a kitchen making pizzas.",
        "Man in apron standing on front of oven with pans and bakeware",
        "A baker is working in the kitchen rolling dough.",
    ],
}
PREDICTIONS = {
    "391895": "A man riding a red motorcycle on a dirt road.",
    "522418": "A woman cutting a large white cake.",
    "184613": "A young boy holding an umbrella next to a cow.",
    "318219": "A boy wearing headphones is looking at a computer.",
    "554625": "Two horses pulling a carriage down a street.",
    "397133": "A man is making a pizza in the kitchen.",
}
OVERLAP_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")


def _pycocoevalcap_tokenized() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(gts, res) exactly as pycocoevalcap's COCOEvalCap prepares them: two PTBTokenizer passes."""
    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in refs] for k, refs in REFERENCES.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": c}] for k, c in PREDICTIONS.items()})
    return gts, res


def _no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "java" else "/bin/true")


@needs_java
def test_overlap_scores_equal_pycocoevalcap_scorers() -> None:
    gts, res = _pycocoevalcap_tokenized()
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = dict(zip(OVERLAP_METRICS[:4], bleu, strict=True))
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    result = caption_metrics(PREDICTIONS, REFERENCES, OVERLAP_METRICS)
    assert result.tokenizer == "ptb-java"
    assert result.skipped == {}
    assert result.scores == expected
    assert 0 < result.scores["BLEU-4"] < 1 and result.scores["CIDEr"] > 0  # neither degenerate nor perfect


@needs_java
def test_python_tokenizer_equals_ptbtokenizer_on_corpus() -> None:
    gts, res = _pycocoevalcap_tokenized()
    assert {k: [ptb_tokenize_python(c) for c in refs] for k, refs in REFERENCES.items()} == gts
    assert {k: [ptb_tokenize_python(c)] for k, c in PREDICTIONS.items()} == res


@needs_java
def test_scores_without_java_equal_java_tokenized(monkeypatch: pytest.MonkeyPatch) -> None:
    with_java = caption_metrics(PREDICTIONS, REFERENCES, OVERLAP_METRICS)
    _no_java(monkeypatch)
    without_java = caption_metrics(PREDICTIONS, REFERENCES, OVERLAP_METRICS)
    assert without_java.tokenizer == "ptb-python"
    assert without_java.scores == with_java.scores


def test_python_tokenizer_follows_ptb_conventions() -> None:
    # Expected strings are PTBTokenizer 3.4.1's output (-preserveLines -lowerCase) after pycocoevalcap's removal.
    assert ptb_tokenize_python("A boy's \"red\" hat (old), isn't it?") == "a boy 's red hat -lrb- old -rrb- is n't it"
    assert (
        ptb_tokenize_python("Mr. Smith cannot see the U.S. flag at 5 p.m.")
        == "mr. smith can not see the u.s. flag at 5 p.m."
    )
    assert (
        ptb_tokenize_python("A 1,000-dollar t-shirt; 50% off -- $3.50...") == "a 1,000-dollar t-shirt 50 % off $ 3.50"
    )
    assert ptb_tokenize_python("The dogs' bowls: empty!") == "the dogs bowls empty"


def test_meteor_and_spice_skipped_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_java(monkeypatch)
    result = caption_metrics(PREDICTIONS, REFERENCES, ("BLEU-4", "METEOR", "SPICE", "SPIDEr"))
    assert NO_JAVA == "no Java runtime (install default-jre-headless)"
    assert result.skipped == {
        "METEOR": NO_JAVA,
        "SPICE": NO_JAVA,
        "SPIDEr": f"needs SPICE, which was skipped: {NO_JAVA}",
    }
    assert list(result.scores) == ["BLEU-4"]
    assert result.tokenizer == "ptb-python"


def test_spice_skipped_when_its_models_are_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: "/usr/bin/java")
    monkeypatch.setattr(metrics, "SPICE_MODELS", (tmp_path / "stanford-corenlp-3.6.0.jar",))
    result = caption_metrics(PREDICTIONS, REFERENCES, ("CIDEr", "SPICE", "SPIDEr"), tokenizer="ptb-python")
    assert result.skipped == {"SPICE": NO_SPICE_MODELS, "SPIDEr": f"needs SPICE, which was skipped: {NO_SPICE_MODELS}"}
    assert "stanford-corenlp-3.6.0-models.jar" in NO_SPICE_MODELS and "cannot be downloaded" in NO_SPICE_MODELS
    assert list(result.scores) == ["CIDEr"]


def test_spider_is_mean_of_cider_and_spice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "model.jar"
    model.touch()
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: "/usr/bin/java")
    monkeypatch.setattr(metrics, "SPICE_MODELS", (model,))
    monkeypatch.setitem(metrics._SCORERS, "SPICE", lambda gts, res: {"SPICE": 0.25})
    result = caption_metrics(PREDICTIONS, REFERENCES, ("SPIDEr",), tokenizer="ptb-python")
    cider = caption_metrics(PREDICTIONS, REFERENCES, ("CIDEr",), tokenizer="ptb-python").scores["CIDEr"]
    assert result.scores == {"SPIDEr": pytest.approx((cider + 0.25) / 2)}
    assert result.skipped == {}


@needs_java
@pytest.mark.slow
def test_meteor_equals_pycocoevalcap() -> None:
    gts, res = _pycocoevalcap_tokenized()
    expected = Meteor().compute_score(gts, res)[0]
    assert caption_metrics(PREDICTIONS, REFERENCES, ("METEOR",)).scores == {"METEOR": pytest.approx(expected, abs=1e-9)}


@needs_java
@pytest.mark.slow
@pytest.mark.skipif(not all(p.exists() for p in metrics.SPICE_MODELS), reason="SPICE's CoreNLP models not installed")
def test_spice_runs_when_its_models_are_installed() -> None:
    result = caption_metrics(PREDICTIONS, REFERENCES, ("SPICE", "SPIDEr"))
    assert 0.05 < result.scores["SPICE"] < 0.6
    assert result.skipped == {}


def test_caption_input_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown caption metrics \['BLEU'\]"):
        caption_metrics(PREDICTIONS, REFERENCES, ("BLEU",))
    with pytest.raises(ValueError, match=r"different ids \(no prediction: \['397133'\], no references: \[\]\)"):
        caption_metrics({k: v for k, v in PREDICTIONS.items() if k != "397133"}, REFERENCES, ("CIDEr",))
    with pytest.raises(ValueError, match=r"items without reference captions: \['1'\]"):
        caption_metrics({"1": "a cat"}, {"1": []}, ("CIDEr",))


def test_ptb_java_without_java_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_java(monkeypatch)
    with pytest.raises(RuntimeError, match="needs Java: no Java runtime"):
        caption_metrics(PREDICTIONS, REFERENCES, ("CIDEr",), tokenizer="ptb-java")


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("Two", "2"),
        ("the dog.", "dog"),
        ("isnt", "isn't"),
        ("dont", "don't"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("A Red Car", "red car"),
        ("1,000", "1000"),  # a digit-comma-digit makes processPunctuation delete, not space out, every mark
        ("3.5", "3.5"),  # periods before a digit stay
        ("1.5.", "1.5"),
        ("black/white", "black white"),  # marks not touching a space become spaces
        ("red , blue", "red blue"),  # marks touching a space are deleted
        ("t-shirt", "t shirt"),
        ("yes!", "yes"),
        ("mr. smith", "mr smith"),
        ("it's", "it's"),  # apostrophes are not in the official list
        ("Im", "im"),  # the table's capitalised keys never match: the text is lower-cased first
        ("  two\tdogs\n", "2 dogs"),
    ],
)
def test_vqa_normalisation_follows_official_rules(answer: str, normalized: str) -> None:
    assert normalize_vqa_answer(answer) == normalized


@pytest.mark.parametrize(("agreeing", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(agreeing: int, expected: float) -> None:
    answers = ["2"] * agreeing + ["3"] * (10 - agreeing)
    assert vqa_accuracy("Two.", answers) == pytest.approx(expected)


def test_vqa_accuracy_fewer_answers_and_official_asymmetry() -> None:
    # 3 annotators, 2 agree: (min(2/3,1) + 1/3 + 1/3) / 3
    assert vqa_accuracy("b", ["a", "b", "b"]) == pytest.approx(4 / 9)
    assert vqa_accuracy("Two", ["2"]) == 1.0  # one answer: exact match after normalising both sides
    assert vqa_accuracy("two dogs", ["2"]) == 0.0
    # Official: annotator answers are punctuation-processed only when they disagree.
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == pytest.approx(1.0)
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_accuracy("yes", [])


def test_exact_match_accuracy_and_choices() -> None:
    assert exact_match("Yes.", "yes") and exact_match(" Red ", "red")
    assert not exact_match("red.", "red car")
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError, match="3 predictions for 2 targets"):
        accuracy([0, 1, 2], [0, 1])
    choices = ("dog", "rooster", "chirping birds")
    assert match_choice("Chirping birds.", choices) == 2
    assert match_choice("a cat", choices) is None


def test_slot_accuracy() -> None:
    assert slot_accuracy("red, three", "red, three") == 1.0
    assert slot_accuracy("Red, two.", "red, three") == 0.5
    assert slot_accuracy("red", "red, three") == 0.5
    assert slot_accuracy("blue, three, big", "red, three") == 0.5
    assert slot_accuracy("three, red", "red, three") == 0.0
