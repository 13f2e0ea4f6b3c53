"""The demo's handlers, driven directly (no browser): streaming, per-session state, restart, bad uploads."""

from __future__ import annotations

import logging
import runpy
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from chatbridge.config_apps import DemoSettings, GenerationSettings
from chatbridge.inference.engine import InferenceEngine
from chatbridge.inference.media import MediaFile, MediaInputError, MediaReader
from chatbridge.models.llm import load_tokenizer
from chatbridge.synthetic.world import SCALES, ensure_world
from chatbridge.ui.app import build_app
from chatbridge.ui.examples import world_examples
from chatbridge.ui.handlers import (
    EMPTY_ANSWER,
    WAITING,
    ChatHandlers,
    DemoSession,
    generation_settings,
    uploaded_media,
)
from tests.conftest import REPO
from tests.media import write_wav
from tests.tiny_sizes import SMALL

SETTINGS = GenerationSettings(max_new_tokens=12, stop="###")
GREEDY = {"with_audio": False, "temperature": 0.0, "top_p": 0.9, "max_new_tokens": 12, "num_beams": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return ensure_world(tmp_path_factory.mktemp("world") / "world", sizes=SCALES["tiny"]).root


@pytest.fixture
def engine(tiny_model, tiny_train_config, tiny_llm_dir) -> InferenceEngine:
    reader = MediaReader(tiny_train_config.processor, tiny_train_config.model)
    return InferenceEngine(tiny_model, load_tokenizer(tiny_llm_dir), reader, SETTINGS)


@pytest.fixture
def handlers(engine) -> ChatHandlers:
    return ChatHandlers(engine, DemoSettings())


def send(handlers: ChatHandlers, state: DemoSession | None, text: str, files=(), **controls) -> list[tuple]:
    """Every update of one message, as Gradio would receive them."""
    message = {"text": text, "files": [str(path) for path in files]}
    return list(handlers.respond(message, state, **(GREEDY | controls)))


def last_state(updates: list[tuple]) -> DemoSession:
    return updates[-1][2]


def chat_text(messages: list[dict]) -> list[tuple[str, object]]:
    return [(message["role"], message["content"]) for message in messages]


def test_an_image_question_streams_then_a_second_turn_then_restart_clears_it(handlers, world):
    image = world / "images" / "img_00000.png"
    updates = send(handlers, None, "what is it?", [image])
    session = last_state(updates)
    messages, textbox, state = updates[0]
    assert state is session and textbox.interactive is False  # the question shows at once; input locked
    assert chat_text(messages) == [("user", [{"path": str(image)}, "what is it?"])]
    streamed = [update[0][-1]["content"] for update in updates[1:-1]]
    assert len(streamed) >= 2 and all(later.startswith(earlier) for earlier, later in pairwise(streamed))
    answer = session.chat.last.answer
    assert answer and streamed[-1].strip() == answer
    assert updates[-1][0][-1] == {"role": "assistant", "content": answer} and updates[-1][1].interactive is True

    second = send(handlers, session, "and what colour is it?")
    assert last_state(second) is session
    assert [turn.question for turn in session.chat.turns] == ["what is it?", "and what colour is it?"]
    assert [message["role"] for message in session.messages] == ["user", "assistant"] * 2

    messages, textbox, state = handlers.restart()
    assert messages == [] and state is None and textbox.interactive is True
    fresh = last_state(send(handlers, state, "hello"))
    assert fresh is not session and [turn.question for turn in fresh.chat.turns] == ["hello"]
    assert len(fresh.messages) == 2


def test_two_sessions_do_not_share_state(handlers, world):
    first = last_state(send(handlers, None, "what is it?", [world / "images" / "img_00001.png"], temperature=0.7))
    second = last_state(send(handlers, None, "what do you hear?", [world / "audios" / "aud_00001.wav"]))
    assert first.chat is not second.chat and first.chat.cache is not second.chat.cache
    assert [(turn.question, [m.modality for m in turn.media]) for turn in first.chat.turns] == [
        ("what is it?", ["image"])
    ]
    assert [(turn.question, [m.modality for m in turn.media]) for turn in second.chat.turns] == [
        ("what do you hear?", ["audio"])
    ]
    assert "what is it?" not in str(second.messages)
    # Each request generates with its own settings; the shared engine's stay as configured.
    assert first.chat.settings.do_sample and first.chat.settings.temperature == 0.7
    assert not second.chat.settings.do_sample
    assert handlers.engine.settings == SETTINGS


def test_a_corrupt_upload_is_reported_in_the_chat_and_the_session_goes_on(handlers, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    session = last_state(send(handlers, None, "what is it?", [tmp_path / "bad.png"]))
    problem = session.messages[-1]["content"]
    assert problem.startswith("⚠️ bad.png: cannot use it as image: it cannot be decoded")
    assert str(tmp_path) not in problem  # the upload's name, not the server's path
    assert session.chat.turns == [] and session.pending == []
    send(handlers, session, "are you there?")
    assert [turn.question for turn in session.chat.turns] == ["are you there?"]
    assert session.messages[-1]["role"] == "assistant" and not session.messages[-1]["content"].startswith("⚠️")


def test_an_oversized_upload_is_reported_in_the_chat_and_the_session_goes_on(engine, world, tmp_path):
    handlers = ChatHandlers(engine, DemoSettings(max_upload_megabytes=0.01))
    big = write_wav(tmp_path / "long.wav", seconds=2.0, sample_rate=16000, freq=440.0)  # 62.5 KiB
    session = last_state(send(handlers, None, "what do you hear?", [big]))
    assert session.messages[-1]["content"] == "⚠️ long.wav: 0.1 MB is over the 0.01 MB limit"
    assert session.chat.turns == []
    send(handlers, session, "what is it?", [world / "images" / "img_00002.png"])  # a small file still works
    assert [turn.question for turn in session.chat.turns] == ["what is it?"]
    assert engine.reader.max_megabytes == 0.01  # an engine loaded without a limit takes the demo's


def test_an_unsupported_file_type_is_reported_in_the_chat(handlers, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    session = last_state(send(handlers, None, "read this", [tmp_path / "notes.txt"]))
    assert session.messages[-1]["content"].startswith(
        "⚠️ notes.txt: unsupported file type '.txt'; the demo takes images .jpg .jpeg .png"
    )
    assert session.chat.turns == []


def test_files_without_a_question_wait_for_the_next_question(handlers, world):
    session = last_state(send(handlers, None, "", [world / "images" / "img_00003.png"]))
    assert session.messages[-1]["content"] == WAITING and session.chat.turns == []
    send(handlers, session, "what is it?")
    assert [[medium.modality for medium in turn.media] for turn in session.chat.turns] == [["image"]]
    assert session.pending == []


def test_uploads_map_to_modalities_by_suffix_with_the_sound_track_on_request():
    paths = [Path("clip.MP4"), Path("beep.wav"), Path("photo.JPG")]
    assert uploaded_media(paths, with_audio=True) == [
        MediaFile(Path("photo.JPG"), "image"),
        MediaFile(Path("clip.MP4"), "video"),
        MediaFile(Path("clip.MP4"), "audio"),
        MediaFile(Path("beep.wav"), "audio"),
    ]
    assert [medium.modality for medium in uploaded_media(paths, with_audio=False)] == ["image", "video", "audio"]
    with pytest.raises(MediaInputError, match=r"^archive.zip: unsupported file type '.zip'"):
        uploaded_media([Path("photo.png"), Path("archive.zip")], with_audio=False)


def test_generation_controls_make_per_request_settings():
    greedy = generation_settings(SETTINGS, temperature=0.0, top_p=0.5, max_new_tokens=7.0, num_beams=2.0)
    assert (greedy.do_sample, greedy.top_p, greedy.max_new_tokens, greedy.num_beams) == (False, 0.5, 7, 2)
    sampled = generation_settings(SETTINGS, temperature=0.8, top_p=0.9, max_new_tokens=5, num_beams=1)
    assert sampled.do_sample and sampled.temperature == 0.8 and sampled.stop == SETTINGS.stop


def test_beam_search_after_a_streamed_turn_answers_at_once(handlers, world):
    session = last_state(send(handlers, None, "what is it?", [world / "images" / "img_00000.png"]))
    updates = send(handlers, session, "and then?", num_beams=3)
    # The question, the whole answer in one piece (transformers cannot stream beams), the unlocked textbox.
    assert len(updates) == 3 and updates[1][0][-1] == updates[2][0][-1]
    assert updates[-1][0][-1]["content"] in (session.chat.last.answer, EMPTY_ANSWER)
    assert [turn.question for turn in session.chat.turns] == ["what is it?", "and then?"]


def test_an_unexpected_error_is_one_line_in_the_chat_and_logged(handlers, monkeypatch, caplog):
    session = last_state(send(handlers, None, "hello"))

    def broken(prompt, streamer=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(session.chat, "_generate", broken)  # generation fails after the turn was added
    with caplog.at_level(logging.ERROR, logger="chatbridge.ui.handlers"):
        send(handlers, session, "again?")
    assert session.messages[-1]["content"] == "⚠️ RuntimeError: out of memory; this turn was dropped"
    assert [turn.question for turn in session.chat.turns] == ["hello"]  # the failed turn left nothing behind
    assert "Traceback" in caplog.text and "out of memory" in caplog.text


def test_examples_come_from_the_synthetic_world_and_answer_on_click(handlers, world, tmp_path):
    examples = world_examples(world)
    assert [len(example["files"]) for example in examples] == [1, 1, 2]
    assert all(Path(path).is_file() for example in examples for path in example["files"])
    assert world_examples(None) == [] and world_examples(tmp_path / "nowhere") == []

    chosen = examples[2]
    selected = SimpleNamespace(value={"text": chosen["text"], "files": [{"path": p} for p in chosen["files"]]})
    session = list(handlers.respond_example(selected, None, **GREEDY))[-1][2]
    assert [[medium.modality for medium in turn.media] for turn in session.chat.turns] == [["image", "audio"]]
    assert isinstance(build_app(handlers, examples, concurrency=1), gr.Blocks)


def test_demo_config_problems_end_in_one_line(tmp_path, tiny_llm_dir, monkeypatch, capsys):
    config = REPO / "eval_configs" / "chatbridge_tiny_eval.yaml"
    command = [sys.executable, str(REPO / "demo.py"), "--cfg-path", str(config), "--options", "demo.max_upload_mb=5"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --options: unknown key 'max_upload_mb' in section 'demo' (did you mean 'max_upload_megabytes'?)"
    ]

    # A missing checkpoint, in this process (a second start-up would import torch and gradio again).
    missing = tmp_path / "none"
    options = [*SMALL, f"model.llm.path={tiny_llm_dir}", f"model.checkpoint={missing}"]
    monkeypatch.setattr(sys, "argv", ["demo.py", "--cfg-path", str(config), "--options", *options])
    assert runpy.run_path(str(REPO / "demo.py"))["main"]() == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(f"error: model.checkpoint: {missing} does not exist")
    )
