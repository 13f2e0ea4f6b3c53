"""A recipe's chat format as one object: how a turn is rendered and tokenised, and what ends an answer.

The inference engine, evaluation and the demo render every prompt through the template the model config names
(`model.chat_template`), so a recipe with another conversation format (LLaVA's, for ChatBind) plugs in here without
touching them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from transformers import PreTrainedTokenizer

from chatbridge.config import Modality
from chatbridge.data.llava_tokenize import encode_llava_prompt
from chatbridge.data.templates import (
    ASSISTANT,
    LLAVA_V1_END,
    render_chat_turn,
    render_llava_multimodal_turn,
    render_llava_v0_turn,
    render_llava_v1_turn,
)
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


def _llava_template(name: str, stop: str, answer_suffix: str, render: Callable, answer_marker: str) -> ChatTemplate:
    """A LLaVA-format template: turns rendered by `render`, tokenised as one string like ChatBind's training."""
    return ChatTemplate(name, stop, answer_suffix, render, partial(encode_llava_prompt, answer_marker=answer_marker))


@CHAT_TEMPLATES.register("llava_v0")
def llava_v0_template() -> ChatTemplate:
    """ChatBind's training format, v0 (docs/reference/chatbind.md §4.3), used for chat too, so that inference sees
    the prompts the model was trained on (the reference chatted in another template, §9.7)."""
    return _llava_template("llava_v0", "###", "\n###", render_llava_v0_turn, f"### {ASSISTANT}:")


@CHAT_TEMPLATES.register("llava_v1")
def llava_v1_template() -> ChatTemplate:
    """LLaVA v1, "USER: ... ASSISTANT: ...</s>" (docs/reference/chatbind.md §4.4), for chat and training."""
    return _llava_template("llava_v1", LLAVA_V1_END, LLAVA_V1_END, render_llava_v1_turn, " ASSISTANT:")


@CHAT_TEMPLATES.register("llava_multimodal")
def llava_multimodal_template() -> ChatTemplate:
    """The reference demo's inference template (docs/reference/chatbind.md §4.2): a faithful option only, since
    ChatBind was trained with v0 and never saw it."""
    return _llava_template("llava_multimodal", "###", "###", render_llava_multimodal_turn, f"###{ASSISTANT}:")
