"""Evaluation metrics, computed the way the field computes them so that scores compare with published numbers.

Captioning scores come from pycocoevalcap, the COCO caption evaluation code behind every captioning table: BLEU-1..4,
METEOR, ROUGE-L, CIDEr (its `Cider` is CIDEr-D), SPICE, and SPIDEr = (CIDEr + SPICE) / 2 for audio captioning.
Captions are tokenised with pycocoevalcap's `PTBTokenizer` (Stanford CoreNLP, Java); without Java a hand-written
Python imitation keeps BLEU, ROUGE-L and CIDEr available, and the result records which tokeniser ran. METEOR and
SPICE are Java programs: without Java, or without SPICE's CoreNLP models, they are reported as skipped with the reason.

VQA accuracy follows the official VQA v2 `vqaEval.py` (GT-Vision-Lab/VQA) rule for rule; the remaining helpers are the
plain accuracies of classification, multiple choice and attribute ("slot") answers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import get_stanford_models
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

# ---------------------------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------------------------

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "SPIDEr")
NO_JAVA = "no Java runtime (install default-jre-headless)"
SPICE_DIR = Path(get_stanford_models.__file__).parent
SPICE_MODELS = tuple(SPICE_DIR / "lib" / f"{get_stanford_models.JAR}{suffix}.jar" for suffix in ("", "-models"))
NO_SPICE_MODELS = (
    "its Stanford CoreNLP models are not installed and cannot be downloaded (pycocoevalcap fetches "
    f"{get_stanford_models.CORENLP}.zip on first use; on a machine with network access run "
    f"`python -m pycocoevalcap.spice.get_stanford_models`, or put {', '.join(p.name for p in SPICE_MODELS)} "
    f"into {SPICE_DIR / 'lib'})"
)

Tokenizer = Literal["auto", "ptb-java", "ptb-python"]
Captions = dict[Hashable, list[str]]


@dataclass(frozen=True)
class CaptionScores:
    """Corpus-level caption scores.

    Attributes:
        scores: metric name -> corpus score (fractions, as pycocoevalcap returns them: CIDEr 1.0 is "100").
        skipped: metric name -> why it was not computed (e.g. "no Java runtime (install default-jre-headless)").
        tokenizer: "ptb-java" (pycocoevalcap's PTBTokenizer, the COCO standard) or "ptb-python" (the imitation).
    """

    scores: dict[str, float]
    skipped: dict[str, str]
    tokenizer: str


def caption_metrics(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    metrics: Sequence[str] = CAPTION_METRICS,
    tokenizer: Tokenizer = "auto",
) -> CaptionScores:
    """Scores one generated caption per item against its references, as the COCO caption evaluation does.

    Args:
        predictions: item id -> generated caption.
        references: item id -> reference captions (at least one); the same ids as `predictions`.
        metrics: names from `CAPTION_METRICS`.
        tokenizer: "auto" uses the Java PTBTokenizer when `java` is on PATH, else the Python imitation.

    Returns:
        The requested scores, the skipped metrics with their reasons, and the tokenizer used.
    """
    _check_caption_inputs(predictions, references, metrics)
    java = shutil.which("java") is not None
    used = _choose_tokenizer(tokenizer, java)
    gts, res = _tokenize_pairs(predictions, references, used)
    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for group in dict.fromkeys(_GROUP[name] for name in _with_dependencies(metrics)):
        reason = _skip_reason(group, java)
        if reason:
            skipped[group] = reason
        else:
            scores.update(_SCORERS[group](gts, res))
    if "SPIDEr" in metrics:
        _add_spider(scores, skipped)
    return CaptionScores(
        scores={name: scores[name] for name in metrics if name in scores},
        skipped={name: skipped[name] for name in metrics if name in skipped},
        tokenizer=used,
    )


def _check_caption_inputs(
    predictions: dict[str, str], references: dict[str, list[str]], metrics: Sequence[str]
) -> None:
    """Fails early with the offending ids or names; pycocoevalcap would only assert."""
    unknown = [name for name in metrics if name not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; known: {list(CAPTION_METRICS)}")
    if not predictions:
        raise ValueError("no predictions to score")
    if predictions.keys() != references.keys():
        missing = sorted(map(str, references.keys() - predictions.keys()))[:5]
        extra = sorted(map(str, predictions.keys() - references.keys()))[:5]
        raise ValueError(
            f"predictions and references cover different ids (no prediction: {missing}, no references: {extra})"
        )
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"items without reference captions: {sorted(map(str, empty))[:5]}")


def _choose_tokenizer(tokenizer: Tokenizer, java: bool) -> str:
    """Java PTB when asked for or available; asking for it without Java is an error, not a silent fallback."""
    if tokenizer == "ptb-java" and not java:
        raise RuntimeError(f"tokenizer 'ptb-java' needs Java: {NO_JAVA}")
    if tokenizer == "auto":
        return "ptb-java" if java else "ptb-python"
    return tokenizer


def _tokenize_pairs(
    predictions: dict[str, str], references: dict[str, list[str]], tokenizer: str
) -> tuple[Captions, Captions]:
    """Tokenises references and predictions in one pass (one JVM start), returning pycocoevalcap's (gts, res)."""
    captions: Captions = {("ref", key): list(refs) for key, refs in references.items()}
    captions.update({("pred", key): [caption] for key, caption in predictions.items()})
    if tokenizer == "ptb-java":
        tokenized = PTBTokenizer().tokenize({key: [{"caption": c} for c in caps] for key, caps in captions.items()})
    else:
        tokenized = {key: [ptb_tokenize_python(c) for c in caps] for key, caps in captions.items()}
    gts = {key: tokenized[("ref", key)] for key in references}
    res = {key: tokenized[("pred", key)] for key in predictions}
    return gts, res


# Hand-written because no maintained Python tokenizer reproduces Stanford's PTBTokenizer 3.4.1 (`-preserveLines
# -lowerCase`): NLTK's TreebankWordTokenizer, one more dependency, keeps brackets as "(" where Stanford writes "-lrb-"
# (which pycocoevalcap's upper-case "-LRB-" entry then fails to remove) and splits only a string-final period where
# Stanford splits every sentence-final one. This covers what plain English captions contain; the tests compare it with
# the Java tokenizer. Known differences: URLs, emoticons, "¢", and rare clitics ("'tis", "y'all", "'n'").
_PTB_UNICODE = str.maketrans({"’": "'", "“": '"', "”": '"', "—": " -- ", "–": " -- ", "…": "..."})
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PTB_SPLITS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r'"'), " '' "),
    (re.compile(r"``?|''"), r" \g<0> "),
    (re.compile(r"\.\.\.+"), " ... "),
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"(?<![\w-])-(?!-)|(?<!-)-(?![\w-])"), " - "),
    (re.compile(r"[?!]+"), r" \g<0> "),
    (re.compile(r"[;$%*+=]|#(?![a-z])|&(?!\w)|(?<!\w)&"), r" \g<0> "),
    (re.compile(r",(?!\d)|(?<!\d),"), " , "),
    (re.compile(r":(?!\d)|(?<!\d):"), " : "),
    (re.compile(r"[()\[\]{}]"), lambda match: f" {_PTB_BRACKETS[match.group()]} "),
)
_PTB_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. st. mt. jr. sr. vs. etc. prof. inc. co. corp. ltd. no. ft. ave. gen. gov. sgt. capt. "
    "jan. feb. mar. apr. jun. jul. aug. sep. sept. oct. nov. dec.".split()
)
_PTB_ACRONYM = re.compile(r"([a-z]\.)+")
_PTB_CLITIC = re.compile(r"(?<=[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m|')$")
_PTB_LEADING_APOSTROPHE_KEPT = re.compile(r"'(s|re|ve|ll|d|m|em|cause|\d+s?)")
_PTB_WORD_SPLITS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}


def ptb_tokenize_python(caption: str) -> str:
    """Imitates pycocoevalcap's tokenisation of one caption: PTB tokens, lower-cased, COCO punctuation removed."""
    text = caption.lower().translate(_PTB_UNICODE)
    for pattern, replacement in _PTB_SPLITS:
        text = pattern.sub(replacement, text)
    tokens = [token for chunk in text.split() for token in _ptb_split_word(chunk)]
    return " ".join(token for token in tokens if token not in PUNCTUATIONS)


def _ptb_split_word(chunk: str) -> list[str]:
    """Splits off a sentence-final period (not an abbreviation's), quotes, clitics ("do n't") and "cannot"-likes."""
    head: list[str] = []
    tail: list[str] = []
    if chunk.endswith(".") and not chunk.endswith("..") and len(chunk) > 1 and not _ptb_abbreviation(chunk):
        chunk, tail = chunk[:-1], ["."]
    if chunk.startswith("'") and len(chunk) > 1 and not _PTB_LEADING_APOSTROPHE_KEPT.fullmatch(chunk):
        head, chunk = ["'"], chunk[1:]
    if chunk in _PTB_WORD_SPLITS:
        return [*head, *_PTB_WORD_SPLITS[chunk].split(), *tail]
    while clitic := _PTB_CLITIC.search(chunk):
        chunk, tail = chunk[: clitic.start()], [clitic.group(), *tail]
    return [*head, chunk, *tail]


def _ptb_abbreviation(word: str) -> bool:
    """PTB keeps the period of abbreviations ("mr.", "etc.") and of letter-period acronyms ("u.s.", "c.")."""
    return word in _PTB_ABBREVIATIONS or _PTB_ACRONYM.fullmatch(word) is not None


def _with_dependencies(metrics: Sequence[str]) -> list[str]:
    """SPIDEr is computed from CIDEr and SPICE."""
    return [dep for name in metrics for dep in (("CIDEr", "SPICE") if name == "SPIDEr" else (name,))]


def _skip_reason(group: str, java: bool) -> str | None:
    """Why a scorer cannot run here (METEOR and SPICE are Java programs; SPICE also needs CoreNLP models)."""
    if group in ("METEOR", "SPICE") and not java:
        return NO_JAVA
    if group == "SPICE" and not all(path.exists() for path in SPICE_MODELS):
        return NO_SPICE_MODELS
    return None


def _add_spider(scores: dict[str, float], skipped: dict[str, str]) -> None:
    """SPIDEr (Liu et al. 2017), the DCASE audio-captioning score: the mean of CIDEr-D and SPICE."""
    if "SPICE" in skipped:
        skipped["SPIDEr"] = f"needs SPICE, which was skipped: {skipped['SPICE']}"
    else:
        scores["SPIDEr"] = (scores["CIDEr"] + scores["SPICE"]) / 2


def _bleu(gts: Captions, res: Captions) -> dict[str, float]:
    """BLEU-1..4 with the "closest" reference length, as pycocoevalcap's `Bleu(4)`."""
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU-{n}": float(score) for n, score in enumerate(scores, start=1)}


def _rouge(gts: Captions, res: Captions) -> dict[str, float]:
    """ROUGE-L with beta = 1.2, as pycocoevalcap's `Rouge`."""
    return {"ROUGE-L": float(Rouge().compute_score(gts, res)[0])}


def _cider(gts: Captions, res: Captions) -> dict[str, float]:
    """CIDEr-D (document frequencies from this corpus' references), as pycocoevalcap's `Cider`."""
    return {"CIDEr": float(Cider().compute_score(gts, res)[0])}


def _meteor(gts: Captions, res: Captions) -> dict[str, float]:
    """METEOR 1.5 through pycocoevalcap's wrapper (which keeps one JVM per `Meteor` object)."""
    return {"METEOR": float(Meteor().compute_score(gts, res)[0])}


def _spice(gts: Captions, res: Captions) -> dict[str, float]:
    """SPICE 1.0 with pycocoevalcap's jar and arguments, minus `-cache`.

    pycocoevalcap's `Spice` passes `-cache`, whose FST serialiser fails on Java >= 16 (InaccessibleObjectException,
    salaniz/pycocoevalcap#20, tylin/coco-caption#59); the cache only speeds up repeated runs, the scores are the same.
    Its constructor would also try to download the CoreNLP models, which `_skip_reason` has already ruled out.
    """
    ids = sorted(gts, key=str)
    with tempfile.TemporaryDirectory() as folder:
        in_path, out_path = Path(folder, "in.json"), Path(folder, "out.json")
        rows = [{"image_id": str(key), "test": res[key][0], "refs": gts[key]} for key in ids]
        in_path.write_text(json.dumps(rows))
        command = ["java", "-jar", "-Xmx8G", "spice-1.0.jar", str(in_path), "-out", str(out_path), "-subset", "-silent"]
        done = subprocess.run(command, cwd=SPICE_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"SPICE failed with exit code {done.returncode}: {done.stderr[-2000:]}")
        results = json.loads(out_path.read_text())
    values = [np.nan if row["scores"]["All"]["f"] is None else float(row["scores"]["All"]["f"]) for row in results]
    return {"SPICE": float(np.mean(values))}


_SCORERS: dict[str, Callable[[Captions, Captions], dict[str, float]]] = {
    "BLEU": _bleu,
    "METEOR": _meteor,
    "ROUGE-L": _rouge,
    "CIDEr": _cider,
    "SPICE": _spice,
}
_GROUP = {name: "BLEU" if name.startswith("BLEU") else name for name in CAPTION_METRICS}

# ---------------------------------------------------------------------------------------------------------------
# VQA accuracy (official VQA v2 rules)
# ---------------------------------------------------------------------------------------------------------------

_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_VQA_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_VQA_ARTICLES = frozenset({"a", "an", "the"})
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern, including its "(?!<=\d)" (a look-ahead, not the intended look-behind): it removes every
# period that is not followed by a digit.
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official call is `periodStrip.sub("", text, re.UNICODE)`: the flag lands in `count`, so at most 32 periods go.
_VQA_PERIOD_COUNT = int(re.UNICODE)


def vqa_process_punctuation(text: str) -> str:
    """Official `processPunctuation`: drop (or space out) the listed marks, then strip periods not before a digit.

    A mark touching a space, or any digit-comma-digit in the answer ("1,000"), makes every listed mark vanish;
    otherwise marks become spaces ("black/white" -> "black white", but "1,000" -> "1000").
    """
    strip_all = _VQA_COMMA_STRIP.search(text) is not None
    out = text
    for mark in _VQA_PUNCT:
        out = out.replace(mark, "" if strip_all or f"{mark} " in text or f" {mark}" in text else " ")
    return _VQA_PERIOD_STRIP.sub("", out, count=_VQA_PERIOD_COUNT)


def vqa_process_digit_article(text: str) -> str:
    """Official `processDigitArticle`: lower-case, number words to digits, drop a/an/the, restore contractions."""
    words = [_VQA_NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The normalisation the official evaluation applies to a predicted answer ("Two dogs." -> "2 dogs")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one answer: the mean over annotators i of min(#{j != i : answer_j == prediction} / 3, 1).

    As in `vqaEval.py`, the prediction is fully normalised while the annotators' answers (already normalised in the
    VQA annotation files) only get `vqa_process_punctuation`, and only when they disagree. The formula works for any
    number of annotators; with one reference answer there is nobody to leave out (the formula would always give 0),
    so the score is exact match after normalising both sides.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    predicted = normalize_vqa_answer(prediction)
    if len(answers) == 1:
        return float(predicted == normalize_vqa_answer(answers[0]))
    references = [vqa_process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    matches = [reference == predicted for reference in references]
    total = sum(matches)
    return sum(min((total - match) / 3, 1.0) for match in matches) / len(matches)


# ---------------------------------------------------------------------------------------------------------------
# Exact match, accuracy, multiple choice, slots
# ---------------------------------------------------------------------------------------------------------------


def normalize_light(text: str) -> str:
    """Lower-case, strip, drop one trailing period: generated answers often end with "." where labels do not."""
    return text.strip().lower().removesuffix(".").strip()


def exact_match(prediction: str, reference: str) -> bool:
    """Whether a free-form answer equals the reference after `normalize_light`."""
    return normalize_light(prediction) == normalize_light(reference)


def accuracy(predictions: Sequence[Hashable], targets: Sequence[Hashable]) -> float:
    """Fraction of equal labels (class ids, choice indices or normalised answers), for classification and choice."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(p == t for p, t in zip(predictions, targets, strict=True)) / len(targets)


def match_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the choice a free-form answer names (after `normalize_light`), or None: turns text into a label."""
    wanted = normalize_light(prediction)
    return next((index for index, choice in enumerate(choices) if normalize_light(choice) == wanted), None)


def slot_accuracy(prediction: str, reference: str) -> float:
    """Fraction of the reference's ", "-separated slots answered correctly, position by position.

    For answers that list attributes ("red, three"): one wrong slot costs only its share. Missing slots count as
    wrong; extra predicted slots are ignored.
    """
    wanted = [normalize_light(slot) for slot in normalize_light(reference).split(", ")]
    given = [normalize_light(slot) for slot in normalize_light(prediction).split(", ")]
    return sum(w == g for w, g in zip(wanted, given, strict=False)) / len(wanted)
