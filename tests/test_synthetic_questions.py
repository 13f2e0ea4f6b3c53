"""The synthetic world's evaluation files (test and held-out splits), their types and chance levels, the LM's texts.

What issue 15's proof reads: per-modality QA and caption files, and JOINT questions (video + audio, image + audio)
that no training file asks, answered "X, Y" and scored per slot.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from chatbridge.data.templates import render_chat_turn
from chatbridge.synthetic.formats import media_descriptions
from chatbridge.synthetic.world import (
    HELD_OUT_AUDIO,
    HELD_OUT_IMAGE,
    HELD_OUT_VIDEO,
    SCALES,
    WorldManifest,
    generate_world,
    world_texts,
)

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
TIMBRE_WORDS = {"sine": "pure", "square": "buzzy"}
FOLDERS = ("test", "eval")
"""The two evaluation splits' folders: new media of training combinations, and held-out combinations."""
JOINT_FILES = {
    f"{f}/{name}": spec
    for f in FOLDERS
    for name, spec in {"tia_qa": ("image", "image_id"), "tva_qa": ("video", "video_id")}.items()
}
SINGLE_FILES = {f"{f}/{kind}_qa": kind for f in FOLDERS for kind in ("image", "video", "audio")}
CAPTION_FILES = {f"{f}/{kind}_cap": kind for f in FOLDERS for kind in ("image", "video", "audio")}
ID_KEYS = {"image": "image_id", "video": "video_id", "audio": "audio"}
TINY_TEXT_SHA256 = "a57d93c311bbe00fcedd5dbc17f14fb9dd75a7e69c28cbcb9cd622ef57004194"
"""sha256 of every JSON file of the tiny world at seed 0 (format version 3)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    return generate_world(tmp_path_factory.mktemp("world"), seed=0)


def _rows(manifest: WorldManifest, name: str) -> list[dict]:
    return json.loads(manifest.path(name).read_text())


def _attributes(manifest: WorldManifest) -> dict[str, dict[str, dict]]:
    return json.loads(manifest.path("attributes").read_text())


def _slot_value(slot: str, entry: dict) -> str:
    """The short answer of `slot` for an item, derived here independently of the generator."""
    derived = {
        "start_colour": entry.get("colour"),
        "colour_change": "yes" if entry.get("end_colour", entry.get("colour")) != entry.get("colour") else "no",
        "count": COUNT_WORDS.get(entry.get("count")),
        "timbre": TIMBRE_WORDS.get(entry.get("timbre")),
    }
    return derived[slot] if slot in derived else entry[slot]


def _combo(kind: str, entry: dict) -> tuple:
    if kind == "image":
        return entry["shape"], entry["colour"]
    if kind == "video":
        return entry["shape"], entry["direction"]
    return entry["count"], entry["pitch"], entry["timbre"]


HELD_OUT = {"image": HELD_OUT_IMAGE, "video": HELD_OUT_VIDEO, "audio": HELD_OUT_AUDIO}


def test_joint_files_have_enough_balanced_questions_of_every_declared_type(world: WorldManifest) -> None:
    for name in JOINT_FILES:
        rows = _rows(world, name)
        types = world.question_types[name]
        assert len(rows) >= 200 and len({row["question_id"] for row in rows}) == len(rows)
        counts = Counter(row["type"] for row in rows)
        assert set(counts) == set(types) and len(types) == 10  # 3 visual x 3 audio attributes, and yes/no
        assert {types[name]["questions"] for name in types} == {len(rows) // 10}  # balanced
        assert {counts[name] == types[name]["questions"] for name in types} == {True}
        yes_no = [row["answer"] for row in rows if row["type"] == "yes_no"]
        assert types["yes_no"]["answers"] == {"no": yes_no.count("no"), "yes": yes_no.count("yes")}
        assert abs(yes_no.count("yes") - yes_no.count("no")) <= 1


def test_joint_answers_name_both_media_slot_by_slot(world: WorldManifest) -> None:
    attributes = _attributes(world)
    for name, (kind, key) in JOINT_FILES.items():
        for row in _rows(world, name):
            assert row["instruction"] == row["question"] and row["question"].endswith("?")
            assert row["answer"] == ", ".join(row["slot_answers"]) and len(row["slots"]) == len(row["slot_answers"])
            if row["type"] == "yes_no":
                assert row["slots"] == ["yes_no"] and row["answer"] in ("yes", "no") and " and " in row["question"]
                continue
            visual_slot, audio_slot = row["slots"]
            assert row["type"] == f"{visual_slot}+{audio_slot}"
            assert row["slot_answers"] == [
                _slot_value(visual_slot, attributes[kind][row[key]]),
                _slot_value(audio_slot, attributes["audio"][row["audio"]]),
            ]
            assert all(
                answer in world.attribute_values[slot]
                for slot, answer in zip(row["slots"], row["slot_answers"], strict=True)
            )


def test_chance_levels_follow_from_the_attribute_values(world: WorldManifest) -> None:
    values = world.attribute_values
    assert values["colour"] == ["red", "green", "blue", "yellow", "purple", "orange"] and values["yes_no"] == [
        "yes",
        "no",
    ]
    assert world.question_types["eval/tia_qa"]["colour+count"]["chance"] == pytest.approx(1 / 24)
    for types in world.question_types.values():
        for entry in types.values():
            slot_chance = [1 / len(values[slot]) for slot in entry["slots"]]
            assert entry["slot_chance"] == pytest.approx(slot_chance)
            assert entry["chance"] == pytest.approx(math.prod(slot_chance))
            assert entry["mean_slot_chance"] == pytest.approx(sum(slot_chance) / len(slot_chance))


def test_held_out_questions_use_only_combinations_no_training_item_has(world: WorldManifest) -> None:
    """And the test split asks about new media of training combinations only: the usual test of what was learnt."""
    attributes = _attributes(world)
    train = {
        kind: {_combo(kind, e) for e in table.values() if e["split"] == "train"} for kind, table in attributes.items()
    }
    seen = {folder: set() for folder in FOLDERS}
    for name in [*JOINT_FILES, *SINGLE_FILES, *CAPTION_FILES]:
        folder = name.split("/")[0]
        for row in _rows(world, name):
            for kind, key in ID_KEYS.items():
                if key in row:
                    entry = attributes[kind][row[key]]
                    assert entry["split"] == folder and row[key].startswith({"test": "ts_", "eval": "ev_"}[folder])
                    held_out = _combo(kind, entry) in HELD_OUT[kind]
                    assert held_out == (folder == "eval") and (_combo(kind, entry) in train[kind]) == (not held_out)
                    seen[folder].add((kind, _combo(kind, entry)))
    assert seen["test"] == {(kind, combo) for kind, combos in train.items() for combo in combos}  # every one asked


def test_single_modality_files_ask_every_attribute_of_a_hundred_items(world: WorldManifest) -> None:
    attributes = _attributes(world)
    expected_types = {
        "image": ["colour", "shape", "position"],
        "video": ["start_colour", "shape", "direction", "colour_change", "end_colour"],
        "audio": ["count", "pitch", "timbre"],
    }
    for name, kind in SINGLE_FILES.items():
        rows = _rows(world, name)
        assert len({row[ID_KEYS[kind]] for row in rows}) >= 100
        assert set(world.question_types[name]) == set(expected_types[kind])
        for row in rows:
            assert row["answer"] == _slot_value(row["type"], attributes[kind][row[ID_KEYS[kind]]])
            assert row["instruction"].endswith(row["question"]) and row["instruction"] != row["question"]
    assert world.question_types["eval/video_qa"]["colour_change"]["answers"].keys() == {"yes", "no"}


def test_caption_files_carry_every_reference(world: WorldManifest) -> None:
    for name, kind in CAPTION_FILES.items():
        rows = _rows(world, name)
        assert len(rows) >= 100
        assert all(len(row["caption"]) == 3 and len(set(row["caption"])) == 3 for row in rows)
        assert all(row["instruction"] and "<QUESTION>" not in row["instruction"] for row in rows)
        assert {ID_KEYS[kind], "instruction", "caption"} == set(rows[0])


def test_lm_texts_hold_the_joint_wording_about_training_items_only(world: WorldManifest) -> None:
    attributes = _attributes(world)
    rows = _rows(world, "lm/joint_qa")
    assert {row["type"] for row in rows} == {t for name in JOINT_FILES for t in world.question_types[name]}
    texts = set(world_texts(world.root))
    descriptions = media_descriptions(attributes)
    for row in rows:
        visual = row["modalities"][0]
        visual_entry, audio_entry = attributes[visual][row[ID_KEYS[visual]]], attributes["audio"][row["audio"]]
        assert visual_entry["split"] == audio_entry["split"] == "train"
        if row["type"] != "yes_no":
            expected = [_slot_value(row["slots"][0], visual_entry), _slot_value(row["slots"][1], audio_entry)]
            assert row["slot_answers"] == expected
        prompt = render_chat_turn(row["modalities"], row["question"], first=True)
        for kind, media_id in ((visual, row[ID_KEYS[visual]]), ("audio", row["audio"])):
            prompt = prompt.replace("<query>", descriptions[kind][media_id], 1)  # each medium described in words
        assert f"{prompt}{row['answer']}\n###" in texts  # the inference template, answered "X, Y"


def _text_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.json")):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_text_files_are_pinned_by_the_format_version(tmp_path: Path) -> None:
    """If this digest changes, the world's content changed: bump `layout.FORMAT_VERSION`, then update it here."""
    manifest = generate_world(tmp_path / "tiny", seed=0, sizes=SCALES["tiny"])
    assert manifest.format_version == 3
    assert _text_digest(manifest.root) == TINY_TEXT_SHA256


def test_media_descriptions_follow_the_split_and_name_every_asked_attribute(world: WorldManifest) -> None:
    attributes = _attributes(world)
    for split, prefix in (("train", ""), ("test", "ts_"), ("eval", "ev_")):
        descriptions = media_descriptions(attributes, split)
        for kind, table in descriptions.items():
            assert set(table) == {i for i, entry in attributes[kind].items() if entry["split"] == split}
            assert all(media_id.startswith(prefix) for media_id in table)
    video_id, entry = next((i, e) for i, e in attributes["video"].items() if e["split"] == "test")
    text = media_descriptions(attributes, "test")["video"][video_id]
    assert text.startswith(f"a {entry['colour']} {entry['shape']} moving {entry['direction']}")
    assert text.endswith(
        f"turns {entry['end_colour']}" if entry["end_colour"] != entry["colour"] else "stays " + entry["colour"]
    )
