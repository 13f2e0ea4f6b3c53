"""Prompt templates as data: stage-1 captions, stage-2 conversations, and the inference prompt
(docs/reference/chatbridge.md §2.2-2.4).

Every string here is reproduced character for character from the reference, because the token ids (and thus the
released checkpoint's behaviour) depend on them: note the missing space in "###Assistant:{answer}", the "." right
after a `<query>`, and the "\n###" that closes single-turn answers but not conversation turns. Templates are chosen
by an explicit modality tuple, never by substring tests on task names (docs/reference/chatbridge.md §7.8).

Media are marked by `<query>`; `chatbridge/data/collate.py` splits on it and reserves the soft-token positions.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from chatbridge.config import Modality

QUERY_PLACEHOLDER = "<query>"
"""Marks where one media block's soft tokens go."""
CAPTION_END_SYM = "\n"
"""Stage 1 appends this to every caption (the reference's `end_sym` default; the stage-2 `###` is unused there)."""
QUESTION_PLACEHOLDER = "<QUESTION>"
"""Replaced by the question in `task_prompt.json` QA templates."""
MAX_CONVERSATION_MESSAGES = 8
"""`conv` samples keep only their first 8 messages (4 exchanges)."""
HUMAN, ASSISTANT = "Human", "Assistant"
"""Role names of the Vicuna v0 `###Human:` / `###Assistant:` format."""

MEDIA_PREFIXES: dict[tuple[Modality, ...], str] = {
    ("image",): "###Human: Given following image: <query>.",
    ("video",): "###Human: Given following video: <query>.",
    ("audio",): "###Human: Given following audio: <query>.",
    ("video", "audio"): "###Human: Given following video: <query> and its background audio: <query>.",
    # No training data in the reference; the wording is the demo's image+audio upload message.
    ("image", "audio"): "###Human: Given following image: <query> and audio: <query>.",
}
"""Stage-2 prefix per modality tuple; the tuple order is the order of the `<query>` blocks."""

_MEDIA_TAGS = ("<image>", "<video>", "<audio>", "<图片>", "<视频>", "<音频>")


def pre_caption(caption: str) -> str:
    """VALOR's caption normalisation, as the stage-1 dataset applied it.

    Lower-case; strip leading `,.!?*#:;~`; `-` and `/` become spaces; `<person>` becomes `person`; runs of two or
    more whitespace characters become one space (a single newline or tab survives, as in the reference); trim.
    """
    caption = caption.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = re.sub(r"\s{2,}", " ", caption)
    return caption.rstrip("\n").strip(" ")


def render_caption(caption: str) -> str:
    """The stage-1 target text: normalised caption + end symbol (no instruction, no template)."""
    return pre_caption(caption) + CAPTION_END_SYM


def media_prefix(modalities: tuple[Modality, ...]) -> str:
    """The `###Human: Given following ...: <query>.` prefix for these media, in this order."""
    try:
        return MEDIA_PREFIXES[tuple(modalities)]
    except KeyError:
        raise KeyError(f"no prompt prefix for modalities {modalities!r}; known: {list(MEDIA_PREFIXES)}") from None


def render_single_turn(modalities: tuple[Modality, ...], instruction: str, output: str) -> str:
    """Captioning, QA, OCR, detail and reasoning samples: one instruction, one answer closed by "\n###"."""
    return f"{media_prefix(modalities)}###{HUMAN}: {instruction}###{ASSISTANT}:{output}\n###"


def clean_human_turn(text: str) -> str:
    """Drop LLaVA media tags together with their adjacent newline ("<image>\n" or "\n<image>").

    Exactly the reference's replacements: a tag with no newline next to it is kept.
    """
    for tag in _MEDIA_TAGS:
        text = text.replace(f"{tag}\n", "").replace(f"\n{tag}", "")
    return text


def render_first_exchange(modalities: tuple[Modality, ...], conversations: Sequence[Mapping[str, str]]) -> str:
    """`det` / `rea` samples: the first human turn (cleaned) and the first answer, as a single turn."""
    return render_single_turn(modalities, clean_human_turn(conversations[0]["value"]), conversations[1]["value"])


def render_conversation(modalities: tuple[Modality, ...], conversations: Sequence[Mapping[str, str]]) -> str:
    """`conv` samples: up to 8 LLaVA messages, `###Human: {q}` / `###Assistant:{a}`, then a final `###`.

    Raises:
        ValueError: a message's `from` is neither "human" nor "gpt" (the reference silently dropped it).
    """
    rendered = [media_prefix(modalities)]
    for message in conversations[:MAX_CONVERSATION_MESSAGES]:
        if message["from"] == "human":
            rendered.append(f"###{HUMAN}: {clean_human_turn(message['value'])}")
        elif message["from"] == "gpt":
            rendered.append(f"###{ASSISTANT}:{message['value']}")
        else:
            raise ValueError(f"conversation message 'from' must be 'human' or 'gpt', got {message['from']!r}")
    return "".join(rendered) + "###"


def load_instruction_templates(path: str | Path) -> dict[str, list[str]]:
    """Read a `task_prompt.json`: a JSON object mapping a task name (e.g. "ti-shortqa") to instruction strings.

    Raises:
        ValueError: the file is not an object of non-empty string lists; the message names the bad key.
    """
    templates = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(templates, dict):
        raise ValueError(f"{path}: expected a JSON object task -> list of strings, got {type(templates).__name__}")
    for task, choices in templates.items():
        if not choices or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{path}: templates of task {task!r} must be a non-empty list of strings")
    return templates


def sample_instruction(
    templates: Mapping[str, Sequence[str]], task: str, rng: random.Random, question: str | None = None
) -> str:
    """A random instruction for `task`, with `<QUESTION>` replaced by `question` when one is given.

    Raises:
        KeyError: no templates for `task`.
        ValueError: the chosen template needs a question and none was given.
    """
    if task not in templates:
        raise KeyError(f"no instruction templates for task {task!r}; known: {sorted(templates)}")
    template = rng.choice(templates[task])
    if question is not None:
        return template.replace(QUESTION_PLACEHOLDER, question)
    if QUESTION_PLACEHOLDER in template:
        raise ValueError(f"instruction template of task {task!r} needs a question: {template!r}")
    return template


def media_message(modalities: Sequence[Modality]) -> str:
    """The chat's upload message, e.g. "Given following image: <query>." (the training prefix without its role).

    The reference demo said "Given the following audio:" for audio, unlike training (§7.12); this uses the training
    wording so that inference sees the prompts the model was tuned on. Combinations without a training template
    (several images, image + video, ...) are described in the same words: "Given following image: <query> and
    image: <query>.".
    """
    if tuple(modalities) in MEDIA_PREFIXES:
        return media_prefix(tuple(modalities)).removeprefix(f"###{HUMAN}: ")
    parts = [f"{modality}: {QUERY_PLACEHOLDER}" for modality in modalities]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Given following {listed}."


def render_chat_turn(modalities: Sequence[Modality], question: str | None, first: bool) -> str:
    """One turn of a chat in the training template: media (if any), then the question, then `###Assistant:`.

    The first turn of a conversation opens with "###"; later turns follow an answer that ended with "###", so they
    start with "Human:", exactly like the segments of a multi-turn training sample. The first turn with media and
    a question is therefore the training string up to the answer (§2.3.1). With `question` None the turn holds
    only the media (a turn whose text was dropped to fit the context).
    """
    parts = []
    if modalities:
        parts.append(f"{HUMAN}: {media_message(modalities)}")
    if question is not None:
        parts.append(f"{HUMAN}: {question}###{ASSISTANT}:")
    text = "###".join(parts) + ("" if question is not None else "###")
    return ("###" if first else "") + text


def render_chat_prompt(messages: Sequence[tuple[str, str | None]]) -> str:
    """The demo's `Conversation.get_prompt` (single "###" separator, empty system prompt).

    Each `(role, text)` renders as "{role}: {text}###"; a message whose text is None or empty is the pending reply
    and renders as "{role}:" with no trailing space. The first turn, `[(HUMAN, media_message(m)), (HUMAN, q),
    (ASSISTANT, None)]`, equals the training string up to the answer.
    """
    rendered = ["###"]
    for role, text in messages:
        rendered.append(f"{role}: {text}###" if text else f"{role}:")
    return "".join(rendered)


# ----------------------------------------------------------------------------------------------- LLaVA (ChatBind)
# ChatBind is a LLaVA fork and uses LLaVA's conversation formats (docs/reference/chatbind.md §4): v0 ("### Human:",
# its training default), v1 ("USER: ... ASSISTANT:"), and the "multimodal" template its demo used for inference.

IM_START, IM_PATCH, IM_END = "<im_start>", "<im_patch>", "<im_end>"
"""Added tokens around each medium; the embedding at `<im_patch>` is replaced by the medium's projected token."""
LLAVA_MEDIA_TAGS: dict[Modality, str] = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
"""Where a medium sits in LLaVA data (LLaVA has `<image>`; the video and audio tags are ours)."""
LLAVA_V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
"""`conv_v1_2.system`: the header of v0 training text (§4.3)."""
LLAVA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""`vicuna_v1_1.system` (§4.4)."""
LLAVA_MULTIMODAL_SYSTEM = (
    "You are LLaVA, a large language and vision assistant trained by UW Madison WAIV Lab."
    "You are able to understand the visual content that the user provides, and assist the user with a variety of "
    "tasks using natural language."
    "Follow the instructions carefully and explain your answers in detail."
)
"""The demo's `multimodal` system prompt (§4.1); the sentences run together as in the source."""
LLAVA_MULTIMODAL_GREETING = "###Human: Hi!###Assistant: Hi there!  How can I help you today?\n"
"""The `multimodal` template's few-shot exchange (two spaces after "!")."""
LLAVA_V0_ROLES = {"human": HUMAN, "gpt": ASSISTANT}
LLAVA_V1_ROLES = {"human": "USER", "gpt": "ASSISTANT"}
LLAVA_V1_END = "</s>"
"""v1 closes every answer with the end-of-sequence text."""


def llava_media(modalities: Sequence[Modality]) -> str:
    """One `<query>` per medium, one per line (the reference appends a medium to the query after a newline)."""
    return "\n".join(QUERY_PLACEHOLDER for _ in modalities)


def llava_message(modalities: Sequence[Modality], question: str | None, media_first: bool = True) -> str:
    """A human message: the media, one per line, then the question (where LLaVA data most often has `<image>`);
    `media_first=False` puts them after the question, as the reference demo did (§4.2)."""
    parts = [llava_media(modalities), question] if media_first else [question, llava_media(modalities)]
    return "\n".join(part for part in parts if part)


def llava_v0_turns(conversation: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(from, "### {role}: {value}\\n") per message: the v0 training turns (§4.3); header and closing separate."""
    return [
        (message["from"], f"### {LLAVA_V0_ROLES[message['from']]}: {message['value']}\n") for message in conversation
    ]


def render_llava_v0(conversation: Sequence[Mapping[str, str]]) -> str:
    """v0 training text: the system header, every turn, and the closing "### "."""
    return LLAVA_V0_SYSTEM + "\n\n" + "".join(turn for _, turn in llava_v0_turns(conversation)) + "### "


def render_llava_v1(conversation: Sequence[Mapping[str, str]]) -> str:
    """v1 training text (`get_prompt` of `vicuna_v1_1`): "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."."""
    separators = {"human": " ", "gpt": LLAVA_V1_END}
    turns = [f"{LLAVA_V1_ROLES[m['from']]}: {m['value']}{separators[m['from']]}" for m in conversation]
    return LLAVA_V1_SYSTEM + " " + "".join(turns)


def render_llava_v0_turn(modalities: Sequence[Modality], question: str | None, first: bool) -> str:
    """A chat turn in the v0 training format, ending where the answer starts ("### Assistant:").

    The first turn opens with the header; later turns follow an answer that ended with the "###" separator, so they
    start with "Human:" (whose dummy-prefix space the tokenizer adds, as in training's "### Human"). A turn whose
    question was dropped holds its media and closes with the separator.
    """
    header = LLAVA_V0_SYSTEM + "\n\n### " if first else ""
    message = f"{HUMAN}: {llava_message(modalities, question)}\n###"
    return header + message + (f" {ASSISTANT}:" if question is not None else "")


def render_llava_v1_turn(modalities: Sequence[Modality], question: str | None, first: bool) -> str:
    """A chat turn in the v1 format: "{system} USER: {q} ASSISTANT:"; later turns follow an answer's "</s>"."""
    header = LLAVA_V1_SYSTEM + " " if first else ""
    user, assistant = LLAVA_V1_ROLES["human"], LLAVA_V1_ROLES["gpt"]
    end = f" {assistant}:" if question is not None else LLAVA_V1_END
    return f"{header}{user}: {llava_message(modalities, question)}{end}"


def render_llava_multimodal_turn(modalities: Sequence[Modality], question: str | None, first: bool) -> str:
    """A chat turn in the reference demo's `multimodal` template (§4.2): "###Human: {q}\\n<media>###Assistant:".

    Faithful inference only: ChatBind trained with v0, whose system prompt and separators differ (§9.7).
    """
    header = LLAVA_MULTIMODAL_SYSTEM + LLAVA_MULTIMODAL_GREETING + "###" if first else ""
    end = f"###{ASSISTANT}:" if question is not None else "###"
    return f"{header}{HUMAN}: {llava_message(modalities, question, media_first=False)}{end}"
