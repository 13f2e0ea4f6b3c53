"""Questions with known answers: the evaluation files, and the joint questions' plain-text twins.

Each evaluation split has the same files, under its own folder: ``annotations/test/`` about new media of the
attribute combinations training has, ``annotations/eval/`` about media whose combinations no training item has:

* ``image_qa``, ``video_qa``, ``audio_qa``: one short-answer question per attribute of every item of the split; the
  question type is the attribute (``colour``, ``direction``, ``count``...).
* ``image_cap``, ``video_cap``, ``audio_cap``: every reference caption of every item of the split.
* ``tia_qa`` (an image and a sound) and ``tva_qa`` (a video and its background audio): JOINT questions, asked in
  one prompt about both media, a pairing that no training file has. Open types are named ``<visual>+<audio>``
  ("what colour is the shape and how many beeps are there?" -> "red, three": the two short answers joined by ", "
  in question order, scored per slot); the ``yes_no`` type asks whether two claims hold together, and is true for
  exactly half of its rows when their number is a multiple of four.

Every row carries its ``type`` and its ``instruction``, the exact text to ask after the media (single-modality rows
use a ``task_prompt.json`` template as stage-2 training does; joint rows ask the bare question, which is also how
the stand-in LM saw them); joint rows also carry ``slots`` and ``slot_answers``. ``question_types`` tells, per
file and type, the slots, the number of questions, and the chance levels of a guesser that picks uniformly among
each slot's values (``ATTRIBUTE_VALUES``): per slot, for all slots at once, and averaged over slots.

The stand-in LM never sees media, so it cannot learn from any media file that "X, Y" answers a joint prompt. The
``lm/joint_qa`` file holds the same kinds of questions about TRAINING items (never held-out ones), rendered into
its corpus by ``formats.world_texts``; the bridge's training files still hold no joint example.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from chatbridge.synthetic.annotations import (
    ATTRIBUTE_VALUES,
    Fact,
    audio_captions,
    audio_facts,
    beep_phrase,
    id_stem,
    image_captions,
    image_facts,
    video_captions,
    video_facts,
)
from chatbridge.synthetic.formats import TASK_PROMPTS
from chatbridge.synthetic.items import (
    COLOURS,
    COUNT_WORDS,
    DIRECTIONS,
    PITCHES,
    SHAPES,
    TIMBRES,
    WHERE,
    AudioItem,
    ImageItem,
    Split,
    VideoItem,
    balanced_indices,
    pick,
)

YES_NO = "yes_no"
"""The joint yes/no question type, and its slot."""
JOINT_VISUAL_ATTRIBUTES = {"image": ("colour", "shape", "position"), "video": ("shape", "start_colour", "direction")}
JOINT_AUDIO_ATTRIBUTES = ("count", "pitch", "timbre")
JOINT_TEXTS_PER_ITEM = 4
"""Joint questions per training image and per training video in the stand-in LM's text file. With 2, the stand-in
answered joint questions about media described in words 85-100 % right per type; with 4, 100 %."""
_FACTS: dict[str, Callable[..., list[Fact]]] = {"image": image_facts, "video": video_facts, "audio": audio_facts}
MEDIA_ID_KEYS = {"image": "image_id", "video": "video_id", "audio": "audio"}
"""The key that names each kind of medium in a question row."""
_PROMPT_CODES = {"image": "ti", "video": "tv", "audio": "ta"}


def joint_types(kind: str) -> list[str]:
    """The joint question types about an image or a video (``kind``) and a sound, in a fixed order."""
    pairs = [f"{visual}+{audio}" for visual in JOINT_VISUAL_ATTRIBUTES[kind] for audio in JOINT_AUDIO_ATTRIBUTES]
    return [*pairs, YES_NO]


# ----------------------------------------------------------------------------------------------- yes/no claims

# A claim is a yes/no statement about one attribute: (template with one "{}", true value, every possible value).
_Claim = tuple[str, str, Sequence[str]]


def _image_claims(item: ImageItem) -> list[_Claim]:
    return [
        ("is the shape a {}", item.shape, SHAPES),
        ("is the shape {}", item.colour, list(COLOURS)),
        ("is the shape {}", WHERE[item.position], list(WHERE.values())),
    ]


def _video_claims(item: VideoItem) -> list[_Claim]:
    return [
        ("is the moving shape a {}", item.shape, SHAPES),
        ("is the moving shape {} at the start", item.colour, list(COLOURS)),
        ("does the shape move {}", item.direction, list(DIRECTIONS)),
    ]


def _audio_claims(item: AudioItem) -> list[_Claim]:
    return [
        ("do you hear {}", beep_phrase(item.count), [beep_phrase(count) for count in COUNT_WORDS]),
        ("are the beeps {}", item.pitch, list(PITCHES)),
        ("do the beeps sound {}", TIMBRES[item.timbre], list(TIMBRES.values())),
    ]


_CLAIMS: dict[str, Callable[..., list[_Claim]]] = {"image": _image_claims, "video": _video_claims}


def _claim_text(rng: np.random.Generator, claims: list[_Claim], truth: bool) -> str:
    template, value, values = pick(rng, claims)
    if not truth:
        value = pick(rng, [other for other in values if other != value])
    return template.format(value)


def _yes_no_question(
    rng: np.random.Generator, kind: str, visual: ImageItem | VideoItem, audio: AudioItem, case: int
) -> tuple[str, str]:
    """``case`` 0 or 1: both claims true ("yes"); 2: the visual claim is false; 3: the audio claim is false."""
    seen = _claim_text(rng, _CLAIMS[kind](visual), truth=case != 2)
    heard = _claim_text(rng, _audio_claims(audio), truth=case != 3)
    return f"{seen} and {heard}?", "yes" if case < 2 else "no"


# ----------------------------------------------------------------------------------------------- joint rows


def _open_question(
    kind: str, visual: ImageItem | VideoItem, audio: AudioItem, question_type: str
) -> tuple[str, list[str]]:
    """The question of an open joint type and its per-slot answers, e.g. ("... and how many ...?", [red, three])."""
    visual_attribute, audio_attribute = question_type.split("+")
    seen = next(fact for fact in _FACTS[kind](visual) if fact.attribute == visual_attribute)
    heard = next(fact for fact in audio_facts(audio) if fact.attribute == audio_attribute)
    return f"{seen.question.removesuffix('?')} and {heard.question}", [seen.short, heard.short]


def _joint_rows(rng: np.random.Generator, kind: str, pairs: Sequence[tuple], per_item: int) -> list[dict]:
    """``per_item`` joint questions per (visual item, sound) pair; types and yes/no cases are balanced."""
    types = joint_types(kind)
    chosen = [types[index] for index in balanced_indices(rng, len(types), len(pairs) * per_item)]
    cases = iter(balanced_indices(rng, 4, chosen.count(YES_NO)))
    rows = []
    for index, question_type in enumerate(chosen):
        visual, audio = pairs[index // per_item]
        if question_type == YES_NO:
            question, answer = _yes_no_question(rng, kind, visual, audio, next(cases))
            slots, slot_answers = [YES_NO], [answer]
        else:
            question, slot_answers = _open_question(kind, visual, audio, question_type)
            slots = question_type.split("+")
        ids = {"question_id": f"{id_stem(visual.id)}_q{index % per_item}", MEDIA_ID_KEYS[kind]: visual.id}
        rows.append(
            {
                **ids,
                "audio": audio.id,
                "type": question_type,
                "question": question,
                "instruction": question,
                "answer": ", ".join(slot_answers),
                "slots": slots,
                "slot_answers": slot_answers,
            }
        )
    return rows


def _image_pairs(split: Split) -> list[tuple[ImageItem, AudioItem]]:
    """Each image with a stand-alone clip of the same split (cycling through the clips)."""
    return [(image, split.audios[index % len(split.audios)]) for index, image in enumerate(split.images)]


# ----------------------------------------------------------------------------------------------- single-modality rows


def _qa_rows(rng: np.random.Generator, kind: str, items: Sequence) -> list[dict]:
    """One short-answer question per attribute of every item, asked with a stage-2 ``shortqa`` template."""
    templates = TASK_PROMPTS[f"{_PROMPT_CODES[kind]}-shortqa"]
    rows = []
    for item in items:
        for fact in _FACTS[kind](item):
            ids = {"question_id": f"{id_stem(item.id)}_{fact.attribute}", MEDIA_ID_KEYS[kind]: item.id}
            instruction = pick(rng, templates).replace("<QUESTION>", fact.question)
            rows.append(
                {
                    **ids,
                    "type": fact.attribute,
                    "question": fact.question,
                    "instruction": instruction,
                    "answer": fact.short,
                }
            )
    return rows


def _caption_rows(rng: np.random.Generator, kind: str, items: Sequence, captions_of: Callable) -> list[dict]:
    """Every reference caption of every item (COCO / Clotho style lists), asked with a stage-2 ``cap`` template."""
    templates = TASK_PROMPTS[f"{_PROMPT_CODES[kind]}-cap"]
    return [
        {MEDIA_ID_KEYS[kind]: item.id, "instruction": pick(rng, templates), "caption": captions_of(item)}
        for item in items
    ]


EVAL_FOLDERS = ("test", "eval")
"""The evaluation splits' annotation folders: new media of training combinations, and held-out combinations."""


def eval_annotations(rng: np.random.Generator, split: Split, per_item: int, folder: str) -> dict[str, list[dict]]:
    """One evaluation split's files under ``folder`` (module docstring); every video of ``split`` has audio."""
    rows = {
        "image_qa": _qa_rows(rng, "image", split.images),
        "video_qa": _qa_rows(rng, "video", split.videos),
        "audio_qa": _qa_rows(rng, "audio", split.audios),
        "image_cap": _caption_rows(rng, "image", split.images, image_captions),
        "video_cap": _caption_rows(rng, "video", split.videos, video_captions),
        "audio_cap": _caption_rows(rng, "audio", split.audios, audio_captions),
        "tia_qa": _joint_rows(rng, "image", _image_pairs(split), per_item),
        "tva_qa": _joint_rows(rng, "video", list(zip(split.videos, split.backgrounds, strict=True)), per_item),
    }
    return {f"{folder}/{name}": content for name, content in rows.items()}


def lm_joint_rows(rng: np.random.Generator, split: Split) -> list[dict]:
    """Joint questions about TRAINING items, for the stand-in LM's corpus only (no bridge trains on them).

    Training videos rarely have background audio, so each image and each video is paired with a stand-alone clip;
    the pairing is immaterial, since the LM sees only the text. ``modalities`` says which prompt prefix to render.
    """
    video_pairs = [(video, split.audios[index % len(split.audios)]) for index, video in enumerate(split.videos)]
    rows = []
    for kind, pairs in (("image", _image_pairs(split)), ("video", video_pairs)):
        for row in _joint_rows(rng, kind, pairs, JOINT_TEXTS_PER_ITEM):
            rows.append({"modalities": [kind, "audio"], **row})
    return rows


# ----------------------------------------------------------------------------------------------- question types


def _slot_values(slot: str) -> tuple[str, ...]:
    return ("yes", "no") if slot == YES_NO else ATTRIBUTE_VALUES[slot]


def _type_entry(rows: Sequence[dict], slots: list[str]) -> dict:
    """Slots, question count and chance levels of one type; yes/no-valued types also record their answers."""
    slot_chance = [1 / len(_slot_values(slot)) for slot in slots]
    entry = {
        "slots": slots,
        "questions": len(rows),
        "slot_chance": slot_chance,
        "chance": math.prod(slot_chance),
        "mean_slot_chance": sum(slot_chance) / len(slot_chance),
    }
    if len(slots) == 1 and _slot_values(slots[0]) == ("yes", "no"):
        entry["answers"] = dict(sorted(Counter(row["answer"] for row in rows).items()))
    return entry


def question_types(annotations: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """Per evaluation QA file, every question type it has, with ``_type_entry``'s fields, in a fixed order."""
    order = {name: rank for rank, name in enumerate([*ATTRIBUTE_VALUES, *joint_types("image"), *joint_types("video")])}
    table = {}
    for key, rows in annotations.items():
        if key.split("/")[0] not in EVAL_FOLDERS or not key.endswith("_qa"):
            continue
        by_type: dict[str, list[dict]] = {}
        for row in sorted(rows, key=lambda row: order[row["type"]]):
            by_type.setdefault(row["type"], []).append(row)
        table[key] = {name: _type_entry(members, members[0].get("slots", [name])) for name, members in by_type.items()}
    return table


def attribute_values() -> dict[str, list[str]]:
    """Every slot's possible values, as the manifest lists them next to the chance levels."""
    return {**{name: list(values) for name, values in ATTRIBUTE_VALUES.items()}, YES_NO: ["yes", "no"]}
