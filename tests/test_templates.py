"""Template strings must match the reference character for character (docs/reference/chatbridge.md §2.2-2.4)."""

from __future__ import annotations

import json
import random

import pytest

from chatbridge.data import templates


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("#A Dog-runs/fast.", "a dog runs fast."),
        ("<person> rides   a\tbike \n", "person rides a\tbike"),
        # lstrip runs before whitespace trimming, so punctuation after a leading space survives (as in VALOR)
        ("  ,.A Man -- rides/a <person>  Bike!\n", ",.a man rides a person bike!"),
    ],
)
def test_pre_caption_matches_valor(raw: str, expected: str) -> None:
    assert templates.pre_caption(raw) == expected


def test_render_caption_appends_newline_end_symbol() -> None:
    assert templates.render_caption("A Red Circle") == "a red circle\n"


def test_media_prefixes_are_the_reference_strings() -> None:
    assert templates.media_prefix(("image",)) == "###Human: Given following image: <query>."
    assert templates.media_prefix(("video",)) == "###Human: Given following video: <query>."
    assert templates.media_prefix(("audio",)) == "###Human: Given following audio: <query>."
    assert (
        templates.media_prefix(("video", "audio"))
        == "###Human: Given following video: <query> and its background audio: <query>."
    )
    assert templates.media_prefix(("image", "audio")).count("<query>") == 2


def test_media_prefix_rejects_unknown_tuples_and_order() -> None:
    with pytest.raises(KeyError, match="known"):
        templates.media_prefix(("audio", "video"))


def test_single_turn_is_the_spec_vqa_example() -> None:
    text = templates.render_single_turn(
        ("image",),
        "Use the image provided to answer the question with a short answer: what is the man holding?.",
        "frisbee",
    )
    assert text == (
        "###Human: Given following image: <query>.###Human: Use the image provided to answer the question with a "
        "short answer: what is the man holding?.###Assistant:frisbee\n###"
    )


def test_clean_human_turn_removes_tags_with_their_newline_only() -> None:
    assert templates.clean_human_turn("<image>\nWhat is this?") == "What is this?"
    assert templates.clean_human_turn("What is this?\n<video>") == "What is this?"
    assert templates.clean_human_turn("<audio> hi") == "<audio> hi"


def test_conversation_keeps_eight_messages_and_has_no_space_after_assistant() -> None:
    messages = []
    for turn in range(5):
        messages += [{"from": "human", "value": f"q{turn}"}, {"from": "gpt", "value": f"a{turn}"}]
    messages[0]["value"] = "<image>\nq0"
    text = templates.render_conversation(("image",), messages)
    assert text == (
        "###Human: Given following image: <query>."
        "###Human: q0###Assistant:a0###Human: q1###Assistant:a1###Human: q2###Assistant:a2###Human: q3###Assistant:a3"
        "###"
    )


def test_conversation_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError, match="'system'"):
        templates.render_conversation(("image",), [{"from": "system", "value": "x"}])


def test_first_exchange_is_a_cleaned_single_turn() -> None:
    conversations = [{"from": "human", "value": "Describe it.\n<video>"}, {"from": "gpt", "value": "A dog."}]
    text = templates.render_first_exchange(("video", "audio"), conversations)
    assert text == templates.render_single_turn(("video", "audio"), "Describe it.", "A dog.")


def test_instruction_file_and_seeded_choice(tmp_path) -> None:
    path = tmp_path / "task_prompt.json"
    choices = ["Answer this: <QUESTION>", "Question: <QUESTION> Answer briefly."]
    path.write_text(json.dumps({"ti-shortqa": choices, "ti-cap": ["Describe the image."]}))
    loaded = templates.load_instruction_templates(path)
    expected = random.Random(3).choice(choices).replace("<QUESTION>", "what color?")
    assert templates.sample_instruction(loaded, "ti-shortqa", random.Random(3), "what color?") == expected
    assert templates.sample_instruction(loaded, "ti-cap", random.Random(0)) == "Describe the image."
    with pytest.raises(KeyError, match="ti-ocr"):
        templates.sample_instruction(loaded, "ti-ocr", random.Random(0))
    with pytest.raises(ValueError, match="needs a question"):
        templates.sample_instruction(loaded, "ti-shortqa", random.Random(0))


@pytest.mark.parametrize("content", [["a"], {"ti-cap": []}, {"ti-cap": "Describe."}, {"ti-cap": [1]}])
def test_instruction_file_rejects_bad_formats(tmp_path, content) -> None:
    path = tmp_path / "task_prompt.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError):
        templates.load_instruction_templates(path)


def test_chat_prompt_first_turn_equals_training_text_up_to_the_answer() -> None:
    modalities = ("video", "audio")
    messages = [
        (templates.HUMAN, templates.media_message(modalities)),
        (templates.HUMAN, "What happens?"),
        (templates.ASSISTANT, None),
    ]
    training = templates.render_single_turn(modalities, "What happens?", "")
    assert templates.render_chat_prompt(messages) == training.removesuffix("\n###")


def test_chat_prompt_later_turns_put_a_space_after_assistant() -> None:
    messages = [
        (templates.HUMAN, templates.media_message(("image",))),
        (templates.HUMAN, "q1"),
        (templates.ASSISTANT, "a1"),
        (templates.HUMAN, "q2"),
        (templates.ASSISTANT, None),
    ]
    assert templates.render_chat_prompt(messages) == (
        "###Human: Given following image: <query>.###Human: q1###Assistant: a1###Human: q2###Assistant:"
    )
