"""A recipe's chat format as one object: how a turn is rendered and tokenised, and what ends an answer.

The inference engine, evaluation and the demo render every prompt through the template the model config names
(`model.chat_template`), so a recipe with another conversation format (LLaVA's, for ChatBind) plugs in here without
touching them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizer

from chatbridge.config import Modality
from chatbridge.data.templates import render_chat_turn
from chatbridge.data.tokenize import EncodedSample, encode_conversation
from chatbridge.registry import CHAT_TEMPLATES

UNLIMITED = 1 << 30
"""`max_txt_len` for prompts: inference never truncates a prompt silently (the context policy decides)."""


@dataclass(frozen=True)
class ChatTemplate:
    """Attributes:
    name: the registered name.
    stop: the text that ends an answer (generation stops there; the answer is cut before it).
    answer_suffix: what a training sample puts after an answer, so that scoring an answer matches training.
    render_turn: (modalities, question or None, is first turn) -> the turn's text, one `<query>` per medium,
        ending where the answer starts.
    encode: (rendered text, tokenizer, soft tokens per medium) -> ids with soft-token slots, as training
        tokenises the same text.
    """

    name: str
    stop: str
    answer_suffix: str
    render_turn: Callable[[Sequence[Modality], str | None, bool], str]
    encode: Callable[[str, PreTrainedTokenizer, Sequence[int]], EncodedSample]


def encode_chatbridge_turn(text: str, tokenizer: PreTrainedTokenizer, soft_tokens: Sequence[int]) -> EncodedSample:
    """A rendered ChatBridge turn, tokenised segment by segment exactly as stage 2 tokenises its samples."""
    return encode_conversation(text, tokenizer, soft_tokens, UNLIMITED)


@CHAT_TEMPLATES.register("chatbridge")
def chatbridge_template() -> ChatTemplate:
    """ChatBridge's `###Human: ... ###Assistant:` format (docs/reference/chatbridge.md §2.3, §2.4)."""
    return ChatTemplate("chatbridge", "###", "\n###", render_chat_turn, encode_chatbridge_turn)
