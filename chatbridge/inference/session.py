"""One conversation: media encoded once and kept, turns in the training template, and the KV cache reused.

The policy (documented in the README's inference section):

* The conversation is its token ids. A turn adds the rendered turn (media message, question, `###Assistant:`),
  tokenised as training tokenises a multi-turn sample, then the answer's ids as generated; an answer that ended
  without the `###` separator (end of sequence, or the token limit) is closed with the separator's ids.
* The KV cache of the previous turns is kept, so a turn computes only its new positions; it equals re-running the
  whole history from scratch (tested). Beam search keeps no reusable cache, so a turn after it re-runs the history.
* Context overflow: when history + turn + `max_new_tokens` exceed the context, the oldest turns lose their text
  (question and answer; their media stay, and BOS is never cut), and the turn result says so; with
  `overflow: refuse` the turn is refused instead. A turn that does not fit even alone is refused.
* `generation.faithful` re-renders the whole conversation as text every turn and tokenises the text after the last
  medium as one piece, as the reference chat did, with no cache (docs/reference/chatbridge.md §2.4).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from transformers import Cache

from chatbridge.config_apps import GenerationSettings
from chatbridge.data.templates import ASSISTANT, HUMAN, media_message, render_chat_prompt
from chatbridge.data.tokenize import EncodedSample, encode_prompt
from chatbridge.errors import UserError
from chatbridge.inference.engine import EncodedMedium, InferenceEngine, Prompt
from chatbridge.inference.generation import (
    CallbackStreamer,
    Generated,
    StopFilter,
    cut_at_stop,
    generate_from_embeds,
)
from chatbridge.inference.media import MediaFile

_DONE = object()  # end of an `ask_stream` queue


class ContextOverflow(UserError):
    """A turn that cannot fit the model's context (the message says by how much)."""


@dataclass
class Turn:
    """One exchange: the media shown with it, the question and the answer (None/empty once dropped)."""

    media: list[EncodedMedium]
    question: str | None
    answer_ids: list[int] = field(default_factory=list)
    answer: str = ""


@dataclass
class TurnResult:
    """What one turn produced.

    Attributes:
        answer: the answer text (before the separator, stripped).
        new_tokens: tokens generated.
        prompt_tokens: positions of the whole conversation the answer was generated after.
        notice: what the context policy did, if anything (e.g. which turns lost their text).
    """

    answer: str
    new_tokens: int
    prompt_tokens: int
    notice: str | None = None


class ChatSession:
    """A multi-turn conversation with one engine; media may come with any turn.

    Args:
        engine: The loaded model (shared by every session).
        settings: This conversation's generation settings (e.g. a demo user's temperature); None: the engine's.
            They may be replaced between turns.
    """

    def __init__(self, engine: InferenceEngine, settings: GenerationSettings | None = None) -> None:
        self.engine = engine
        self._settings = engine.settings
        self.settings = settings or engine.settings
        self.turns: list[Turn] = []
        self.cache: Cache | None = None
        self.cached_ids: list[int] = []
        self.last: TurnResult | None = None

    @property
    def settings(self) -> GenerationSettings:
        """How this conversation generates (the stop text defaults to the chat template's)."""
        return self._settings

    @settings.setter
    def settings(self, settings: GenerationSettings) -> None:
        self._settings = settings if settings.stop else dataclasses.replace(settings, stop=self.engine.template.stop)

    def reset(self) -> None:
        """Forget every turn, medium and cached position."""
        self.turns, self.cache, self.cached_ids, self.last = [], None, [], None

    def ask(
        self, question: str, media: Sequence[MediaFile] = (), on_text: Callable[[str], None] | None = None
    ) -> TurnResult:
        """Answer `question` about `media` (and everything shown before).

        `on_text` receives the answer's text piece by piece while it is generated (in this thread, so generation
        runs at full speed; `ask_stream` is the iterator form).

        Raises:
            MediaInputError: a medium cannot be used (nothing of the turn is kept).
            ContextOverflow: the turn does not fit the context under the configured policy.
        """
        prompt, notice = self._begin(question, media)
        beams = self.settings.num_beams > 1  # transformers cannot stream beam search: the answer comes whole
        streamer = None
        if on_text is not None and not beams:
            streamer = CallbackStreamer(self.engine.tokenizer, StopFilter(self.settings.stop, on_text))
        try:
            generated = self._generate(prompt, streamer)
        except BaseException:
            self.turns.pop()  # a failed turn leaves nothing behind
            raise
        result = self._finish(prompt, generated, notice)
        if on_text is not None and beams:
            on_text(result.answer)
        return result

    def ask_stream(self, question: str, media: Sequence[MediaFile] = ()) -> Iterator[str]:
        """`ask`, yielding the answer's text as it is generated; `self.last` holds the result afterwards.

        Generation runs in a helper thread. On a CPU, PyTorch's thread pool serves another thread less well than
        the main one (measured: 1.3-1.8x slower generation of a small LLM on 2 cores), so terminal use takes
        `ask(on_text=...)`; the demo's handlers run in worker threads anyway.
        """
        pieces: queue.Queue = queue.Queue()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.ask(question, media, on_text=pieces.put)
            except BaseException as error:  # handed to the consuming thread below
                errors.append(error)
            finally:
                pieces.put(_DONE)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (piece := pieces.get()) is not _DONE:
            yield piece
        thread.join()
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------------------------------- one turn

    def _begin(self, question: str, media: Sequence[MediaFile]) -> tuple[Prompt, str | None]:
        """Encode the turn's media, add the turn, make the conversation fit; returns the whole prompt."""
        encoded = self.engine.encode_media(media)
        self.turns.append(Turn(encoded, question))
        try:
            notice = self._fit_context()
        except ContextOverflow:
            self.turns.pop()
            raise
        return self._conversation_prompt(), notice

    def _generate(self, prompt: Prompt, streamer: CallbackStreamer | None = None) -> Generated:
        engine = self.engine
        embeds, mask, _ = engine.embed_prompts([prompt])
        ids = [engine.tokenizer.bos_token_id, *prompt.encoded.input_ids]
        # A conversation's cache holds one sequence; beam search needs one per beam, so it starts from scratch.
        usable = self._cache_is_prefix_of(ids) and self.settings.num_beams == 1
        cache = self.cache if usable else None
        return generate_from_embeds(engine.model.llm, engine.tokenizer, embeds, mask, self.settings, cache, streamer)

    def _finish(self, prompt: Prompt, generated: Generated, notice: str | None) -> TurnResult:
        tokenizer, stop = self.engine.tokenizer, self.settings.stop
        tokens = generated.tokens[0].tolist()
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        turn = self.turns[-1]
        turn.answer = cut_at_stop(text, stop)
        turn.answer_ids = self._closed_answer(tokens, text)
        prompt_ids = [tokenizer.bos_token_id, *prompt.encoded.input_ids]
        self.cache = None if self.settings.faithful else generated.cache
        self.cached_ids = prompt_ids + tokens[:-1] if self.cache is not None else []
        self.last = TurnResult(turn.answer, len(tokens), len(prompt_ids), notice)
        return self.last

    def _closed_answer(self, tokens: list[int], text: str) -> list[int]:
        """The answer's ids for the history: as generated, without end-of-sequence, ending with the separator."""
        tokenizer, stop = self.engine.tokenizer, self.settings.stop
        kept = [token for token in tokens if token not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
        if stop not in text:
            kept += tokenizer.encode(stop, add_special_tokens=False)
        return kept

    def _cache_is_prefix_of(self, ids: list[int]) -> bool:
        return self.cache is not None and ids[: len(self.cached_ids)] == self.cached_ids

    # ------------------------------------------------------------------------------------------- the conversation

    def _conversation_prompt(self) -> Prompt:
        """Every turn's ids in order (the last turn still waiting for its answer), with all media."""
        if self.settings.faithful:
            return self._faithful_prompt()
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        media: list[EncodedMedium] = []
        for number, turn in enumerate(self.turns):
            prompt = self.engine.turn_prompt(turn.question, turn.media, first=number == 0)
            spans += [(len(ids) + start, length) for start, length in prompt.encoded.media_spans]
            ids += prompt.encoded.input_ids + turn.answer_ids
            media += turn.media
        return Prompt(EncodedSample(ids, [-100] * len(ids), spans), media)

    def _faithful_prompt(self) -> Prompt:
        """The reference chat's rendering: `Conversation.get_prompt` text, the tail encoded as one piece."""
        messages: list[tuple[str, str | None]] = []
        for turn in self.turns:
            if turn.media:
                messages.append((HUMAN, media_message([m.modality for m in turn.media])))
            if turn.question is not None:
                messages += [(HUMAN, turn.question), (ASSISTANT, turn.answer or None)]
        media = [medium for turn in self.turns for medium in turn.media]
        counts = [medium.soft_tokens.shape[0] for medium in media]
        return Prompt(encode_prompt(render_chat_prompt(messages), self.engine.tokenizer, counts), media)

    def _fit_context(self) -> str | None:
        """Drop the text of the oldest turns until the conversation and the answer fit; None if nothing dropped."""
        limit = self._context_limit()
        dropped = 0
        while (needed := self.length() + self.settings.max_new_tokens) > limit:
            droppable = [turn for turn in self.turns[:-1] if turn.question is not None]
            if not droppable or self.settings.overflow == "refuse":
                raise ContextOverflow(
                    f"the conversation needs {needed} positions (with max_new_tokens = "
                    f"{self.settings.max_new_tokens}) but the context holds {limit}; start a new conversation"
                    + ("" if droppable else " or ask a shorter question")
                )
            droppable[0].question, droppable[0].answer_ids, droppable[0].answer = None, [], ""
            self.turns = [turn for turn in self.turns if turn.media or turn.question is not None]
            dropped += 1
        if dropped:
            self.cache, self.cached_ids = None, []
            return f"dropped the text of the {dropped} oldest turn(s) to fit the {limit}-token context"
        return None

    def length(self) -> int:
        """Positions the conversation occupies: BOS, every turn and every answer so far."""
        return 1 + len(self._conversation_prompt().encoded.input_ids)

    def _context_limit(self) -> int:
        configured = self.settings.max_context
        return configured or int(self.engine.model.llm.config.max_position_embeddings)

    def history(self) -> list[tuple[str | None, str]]:
        """(question, answer) of every turn still holding text, for display."""
        return [(turn.question, turn.answer) for turn in self.turns]
