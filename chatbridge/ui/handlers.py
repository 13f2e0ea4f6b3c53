"""What the demo does on each browser event, as plain functions of the event's inputs.

Why plain functions: every behaviour of the demo (streaming, one conversation per browser session, messages for
bad uploads, restart) is tested by calling them directly (tests/test_demo.py); `app.py` only wires them to
components. No handler lets an exception reach the browser: a problem with the user's input becomes a one-line
message in the chat, anything unexpected is logged with its traceback and reported in one line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from chatbridge.config import Modality
from chatbridge.config_apps import DemoSettings, GenerationSettings
from chatbridge.inference.engine import InferenceEngine
from chatbridge.inference.media import SUFFIXES, MediaFile, MediaInputError, media_files
from chatbridge.inference.session import ChatSession, ContextOverflow

logger = logging.getLogger(__name__)

Message = dict[str, Any]
"""A chat message as Gradio's `Chatbot` shows it: `{"role": "user" | "assistant", "content": ...}`."""
Update = tuple[Any, Any, Any]
"""What a handler gives the (chatbot messages, textbox, session state) outputs; `gr.skip()` leaves one unchanged."""

EMPTY_ANSWER = "*(the model answered with nothing)*"
"""Shown for an empty answer, so a turn never looks as if it were still running."""
WAITING = "Got it. Ask a question about it."
"""The reply to files sent without a question: they are kept for the next question, as in the terminal chat."""
PLURALS: dict[Modality, str] = {"image": "images", "video": "videos", "audio": "audio"}


@dataclass
class DemoSession:
    """One browser session: its own conversation with the model, the chat as shown, and media awaiting a question.

    Kept in `gr.State`, so Gradio gives every browser tab its own and frees it when the tab closes; two sessions
    share only the engine's model, never turns, media or KV cache.
    """

    chat: ChatSession
    messages: list[Message] = field(default_factory=list)
    pending: list[MediaFile] = field(default_factory=list)


def generation_settings(
    base: GenerationSettings, temperature: float, top_p: float, max_new_tokens: float, num_beams: float
) -> GenerationSettings:
    """The settings of one request from the UI's controls; temperature 0 means greedy, above 0 samples.

    A new object each time (`dataclasses.replace`): the engine's settings are shared by every session.
    Sliders may deliver floats, hence the `int`s.
    """
    sampling = temperature > 0
    return dataclasses.replace(
        base,
        do_sample=sampling,
        temperature=temperature if sampling else base.temperature,
        top_p=top_p,
        max_new_tokens=max(1, int(max_new_tokens)),
        num_beams=max(1, int(num_beams)),
    )


def modality_of(path: Path) -> Modality | None:
    """The modality an uploaded file is read as, by its suffix; None for a type no modality takes."""
    suffix = path.suffix.lower()
    return next((modality for modality, suffixes in SUFFIXES.items() if suffix in suffixes), None)


def accepted_types() -> str:
    """The upload suffixes by modality, for the message about an unsupported file."""
    return "; ".join(f"{PLURALS[modality]} {' '.join(suffixes)}" for modality, suffixes in SUFFIXES.items())


def uploaded_media(paths: Sequence[Path], with_audio: bool) -> list[MediaFile]:
    """Uploads as media in the terminal chat's prompt order: images, videos (each with its sound track), audio.

    Raises:
        MediaInputError: a file of a type no modality takes (the message names it and lists the accepted types).
    """
    kinds: dict[Modality, list[Path]] = {"image": [], "video": [], "audio": []}
    for path in paths:
        modality = modality_of(path)
        if modality is None:
            raise MediaInputError(
                f"{path}: unsupported file type {path.suffix or '(none)'!r}; the demo takes {accepted_types()}"
            )
        kinds[modality].append(path)
    return media_files(kinds["image"], kinds["video"], kinds["audio"], with_audio)


def user_message(question: str, files: Sequence[Path]) -> Message:
    """The user's turn as shown: the files (Gradio renders images, audio and video players), then the text."""
    return {"role": "user", "content": [{"path": str(path)} for path in files] + ([question] if question else [])}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": text}


def problem_message(error: BaseException, paths: Sequence[Path]) -> Message:
    """A problem as one line in the chat, naming uploads by their own names instead of the server's temp paths."""
    text = " ".join(str(error).split())
    for path in paths:
        text = text.replace(str(path), path.name)
    return assistant_message(f"⚠️ {text}")


def parse_message(message: dict[str, Any] | None) -> tuple[str, list[Path]]:
    """(question, uploaded files) of a `MultimodalTextbox` value (`{"text": str, "files": [path, ...]}`)."""
    message = message or {}
    return (message.get("text") or "").strip(), [Path(path) for path in message.get("files") or []]


class ChatHandlers:
    """The demo's event handlers around one loaded engine.

    Args:
        engine: The loaded model, tokenizer and media reader, shared by every session (never modified here).
        demo: The demo settings; `max_upload_megabytes` limits each file a session reads.
    """

    def __init__(self, engine: InferenceEngine, demo: DemoSettings) -> None:
        self.engine = engine
        if engine.reader.max_megabytes is None:  # the engine was loaded without the demo's upload limit
            engine.reader.max_megabytes = demo.max_upload_megabytes

    def new_session(self) -> DemoSession:
        """A conversation of its own, sharing only the engine's model."""
        return DemoSession(ChatSession(self.engine))

    # ------------------------------------------------------------------------------------------- events

    def respond(
        self,
        message: dict[str, Any] | None,
        state: DemoSession | None,
        with_audio: bool,
        temperature: float,
        top_p: float,
        max_new_tokens: float,
        num_beams: float,
    ) -> Iterator[Update]:
        """Answer a message (text and files), streaming: yields (chat messages, textbox, session) as the answer grows.

        The first update shows the question at once and locks the textbox until the answer is complete, so one
        session never runs two turns at once.
        """
        session = state or self.new_session()
        question, files = parse_message(message)
        if not question and not files:
            yield session.messages, gr.MultimodalTextbox(interactive=True), session
            return
        session.messages.append(user_message(question, files))
        yield list(session.messages), gr.MultimodalTextbox(value=None, interactive=False), session
        settings = generation_settings(self.engine.settings, temperature, top_p, max_new_tokens, num_beams)
        for messages in self._answer(session, question, files, with_audio, settings):
            yield messages, gr.skip(), gr.skip()
        yield list(session.messages), gr.MultimodalTextbox(interactive=True), session

    def respond_example(
        self,
        selected: gr.SelectData,
        state: DemoSession | None,
        with_audio: bool,
        temperature: float,
        top_p: float,
        max_new_tokens: float,
        num_beams: float,
    ) -> Iterator[Update]:
        """A click on one of the chat's examples: answered as if its text and files had been sent."""
        example = selected.value if isinstance(selected.value, dict) else {}
        files = [item["path"] if isinstance(item, dict) else item for item in example.get("files") or []]
        message = {"text": example.get("text", ""), "files": files}
        yield from self.respond(message, state, with_audio, temperature, top_p, max_new_tokens, num_beams)

    @staticmethod
    def restart() -> Update:
        """A new conversation: the chat emptied, the session dropped (the next message starts a fresh one).

        Dropped rather than `reset()`: Restart also cancels a running answer, whose generation thread may still
        finish on the old session; a fresh session is never touched by it.
        """
        return [], gr.MultimodalTextbox(value=None, interactive=True), None

    # ------------------------------------------------------------------------------------------- one turn

    def _answer(
        self, session: DemoSession, question: str, files: list[Path], with_audio: bool, settings: GenerationSettings
    ) -> Iterator[list[Message]]:
        """Run one turn, yielding the chat as it grows; every problem ends as a message in the chat."""
        shown = [medium.path for medium in session.pending] + files
        try:
            media = session.pending + uploaded_media(files, with_audio)
            session.pending = [] if question else media
            if not question:
                session.messages.append(assistant_message(WAITING))
                return
            yield from self._stream(session, question, media, settings)
        except (MediaInputError, ContextOverflow) as error:
            session.pending = []
            session.messages.append(problem_message(error, shown))
        except Exception as error:  # a bug or a resource problem: never a traceback in the browser
            logger.exception("the demo failed to answer; the turn was dropped")
            session.pending = []  # the session itself dropped the failed turn
            first_line = next(iter(str(error).splitlines()), "")
            session.messages.append(
                problem_message(RuntimeError(f"{type(error).__name__}: {first_line}; this turn was dropped"), [])
            )

    def _stream(
        self, session: DemoSession, question: str, media: list[MediaFile], settings: GenerationSettings
    ) -> Iterator[list[Message]]:
        """The answer piece by piece with this request's settings (beam search arrives whole: it cannot stream)."""
        chat = session.chat
        chat.settings = settings  # the session's own: other sessions keep theirs
        start, answer = len(session.messages), ""
        for piece in chat.ask_stream(question, media):
            answer += piece
            session.messages[start:] = [assistant_message(answer)]
            yield list(session.messages)
        result = chat.last
        session.messages[start:] = [assistant_message(result.answer or EMPTY_ANSWER)]
        if result.notice:
            session.messages.append(assistant_message(f"*({result.notice})*"))
