"""Stage-2 MULTIS datasets: annotation rows -> `###Human: ... ###Assistant:...` conversations.

See docs/reference/chatbridge.md §2.3.1 and §4.4.

Rows carry a media id (`video_id`, else `image_id`) and the fields of their task:

=========  ===========================================================  =========================================
task       fields                                                       text
=========  ===========================================================  =========================================
caption    `caption` or `desc`: string or list                          random `{code}-cap` instruction, caption
shortqa,   `question` + `answer`: strings or parallel lists              `{code}-{task}` template with the
normalqa                                                                `<QUESTION>` filled in, answer
ocr        `text`: string or list (joined with ", ")                    random `{code}-ocr` instruction, text
det, rea   `conversations` (LLaVA): the first human/gpt exchange          one turn
conv       `conversations`: up to 8 messages                             multi-turn
=========  ===========================================================  =========================================

`{code}` is `ti`, `tv`, `ta`, `tva` or `tia`, derived from the dataset's explicit `modalities` tuple (never from a
task string), and it is only used to look up `task_prompt.json`. The media of every modality of the tuple are
loaded for the same id, so `[video, audio]` means a video and its background audio (`video_root/id`,
`audio_root/id.wav`). List entries are picked at random in training and the first at evaluation; instruction
templates are drawn from the sample's generator in both phases, so evaluation is reproducible but varied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import torch

from chatbridge.config import DatasetConfig, Modality, Task
from chatbridge.data.datasets.base import (
    DataContext,
    MediaLoader,
    RowError,
    build_media_loader,
    parse_rows,
    pick_index,
    python_rng,
    read_annotation_list,
    row_media_id,
    text_choices,
)
from chatbridge.data.datasets.captions import row_captions
from chatbridge.data.sample import MultimodalSample
from chatbridge.data.templates import (
    MEDIA_PREFIXES,
    QUESTION_PLACEHOLDER,
    load_instruction_templates,
    render_conversation,
    render_first_exchange,
    render_single_turn,
    sample_instruction,
)
from chatbridge.data.tokenize import encode_conversation
from chatbridge.errors import UserError
from chatbridge.registry import DATASETS

MODALITY_CODES: dict[tuple[Modality, ...], str] = {
    ("image",): "ti",
    ("video",): "tv",
    ("audio",): "ta",
    ("video", "audio"): "tva",
    ("image", "audio"): "tia",
}
"""The reference's task-name prefix of each modality tuple (keys of `task_prompt.json`)."""
PROMPT_SUFFIXES: dict[str, str] = {"caption": "cap", "shortqa": "shortqa", "normalqa": "normalqa", "ocr": "ocr"}
"""Tasks whose instruction comes from `task_prompt.json`, and their key suffix."""
QA_TASKS = ("shortqa", "normalqa")
CONVERSATION_ROLES = ("human", "gpt")
OCR_SEPARATOR = ", "


@dataclass(frozen=True)
class InstructionRow:
    """A validated MULTIS row; which fields are filled depends on the task.

    Attributes:
        media_id: Id shared by every modality's file.
        outputs: caption choices, QA answers (parallel to `questions`) or the one joined OCR text.
        questions: QA questions.
        conversation: LLaVA messages (`from`, `value`) of det/rea/conv rows.
    """

    media_id: str
    outputs: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    conversation: tuple[Mapping[str, str], ...] = ()


def prompt_key(modalities: Sequence[Modality], task: Task) -> str:
    """The `task_prompt.json` key of a prompted task, e.g. (video, audio) + caption -> `tva-cap`."""
    return f"{MODALITY_CODES[tuple(modalities)]}-{PROMPT_SUFFIXES[task]}"


def parse_conversation(row: Mapping[str, Any], min_messages: int) -> tuple[Mapping[str, str], ...]:
    """`conversations` as LLaVA messages: human first, roles human/gpt, string values."""
    messages = row.get("conversations")
    if not isinstance(messages, list) or len(messages) < min_messages:
        raise RowError("bad conversation", f"conversations must be a list of at least {min_messages} messages")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise RowError("bad conversation", f"message {number} needs a string 'value'")
        if message.get("from") not in CONVERSATION_ROLES:
            raise RowError("bad conversation", f"message {number} is from {message.get('from')!r}, not human/gpt")
        expected = CONVERSATION_ROLES[number % 2]
        if number < 2 and message["from"] != expected:
            raise RowError("bad conversation", f"message {number} must be from {expected!r}")
    return tuple(messages)


def parse_task_fields(row: Mapping[str, Any], task: Task) -> dict[str, tuple]:
    """The task's fields of a row as `InstructionRow` keyword arguments; raises RowError naming the problem."""
    if task == "caption":
        return {"outputs": row_captions(row)}
    if task in QA_TASKS:
        questions = text_choices(row, "question", "bad question/answer")
        answers = text_choices(row, "answer", "bad question/answer")
        if len(questions) != len(answers):
            raise RowError("bad question/answer", f"{len(questions)} questions but {len(answers)} answers")
        return {"questions": questions, "outputs": answers}
    if task == "ocr":
        return {"outputs": (OCR_SEPARATOR.join(text_choices(row, "text", "no text")),)}
    return {"conversation": parse_conversation(row, min_messages=2 if task in ("det", "rea") else 1)}


def row_parser(task: Task):
    """A `parse_rows` callback for rows of `task`."""

    def parse(row: Any) -> InstructionRow:
        media_id = row_media_id(row)
        return InstructionRow(media_id, **parse_task_fields(row, task))

    return parse


class InstructionSource:
    """A MULTIS task file over the media folders of its modalities (a `SampleSource`).

    Args:
        name: Dataset name.
        rows: Validated rows, in file order.
        task: Task family.
        media: Loads the files of every modality of a row.
        templates: Instruction templates of the prompted tasks (`task_prompt.json`); empty for det/rea/conv.
        context: Tokenizer, query-slot counts and length limit.
        bad_rows: Problem kind -> malformed rows dropped at build time.
    """

    def __init__(
        self,
        name: str,
        rows: Sequence[InstructionRow],
        task: Task,
        media: MediaLoader,
        templates: Mapping[str, Sequence[str]],
        context: DataContext,
        bad_rows: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.rows = list(rows)
        self.task = task
        self.media = media
        self.templates = templates
        # Plain values only (not the model config), so that a data worker unpickles the source without the models.
        self.tokenizer, self.max_txt_len = context.tokenizer, context.model.max_txt_len
        self.bad_rows = dict(bad_rows or {})
        self.bos_mask_on_padded_rows = context.model.faithful.bos_mask_on_padded_rows

    def __len__(self) -> int:
        return len(self.rows)

    def media_id(self, index: int) -> str:
        """The id of row `index` (for reports and tests)."""
        return self.rows[index].media_id

    def render(self, index: int, train: bool, generator: torch.Generator) -> str:
        """The conversation text of row `index`, with one `<query>` per modality (§2.3.1)."""
        row, modalities = self.rows[index], self.media.modalities
        if self.task == "det" or self.task == "rea":
            return render_first_exchange(modalities, row.conversation)
        if self.task == "conv":
            return render_conversation(modalities, row.conversation)
        choice = pick_index(len(row.outputs), train, generator)
        question = row.questions[choice] if self.task in QA_TASKS else None
        instruction = sample_instruction(
            self.templates, prompt_key(modalities, self.task), python_rng(generator), question
        )
        return render_single_turn(modalities, instruction, row.outputs[choice])

    def load(self, index: int, train: bool, generator: torch.Generator) -> MultimodalSample:
        """Row `index` -> sample; the text is drawn before the media, so a seed fixes both.

        Raises:
            MediaError: a media file is missing or unusable.
        """
        text = self.render(index, train, generator)
        media = self.media.load(self.rows[index].media_id, train, generator)
        soft_tokens = self.media.soft_tokens_of(media)
        encoded = encode_conversation(text, self.tokenizer, soft_tokens, self.max_txt_len)
        return MultimodalSample(encoded=encoded, media=media, source=self.name, index=index)


def load_task_templates(name: str, cfg: DatasetConfig) -> dict[str, list[str]]:
    """The instruction templates a prompted task needs, checked at build time so that `load` cannot fail on them.

    Raises:
        ValueError: no `prompts` file, no key for this modality tuple and task, or QA templates without
            `<QUESTION>` (the question would silently vanish) / other templates with one.
    """
    if cfg.task not in PROMPT_SUFFIXES:
        return {}
    key = prompt_key(cfg.modalities, cfg.task)
    if cfg.prompts is None:
        raise UserError(f"dataset {name}: task {cfg.task!r} needs prompts (a task_prompt.json with key {key!r})")
    templates = load_instruction_templates(cfg.prompts)
    if key not in templates:
        raise UserError(f"dataset {name}: {cfg.prompts} has no templates {key!r}; it has {sorted(templates)}")
    needs_question = cfg.task in QA_TASKS
    for template in templates[key]:
        if (QUESTION_PLACEHOLDER in template) != needs_question:
            state = "lacks" if needs_question else "has"
            raise UserError(
                f"dataset {name}: {cfg.prompts} template of {key!r} {state} {QUESTION_PLACEHOLDER}: {template!r}"
            )
    return {key: templates[key]}


@DATASETS.register("multis_json")
def build_multis_json(name: str, cfg: DatasetConfig, context: DataContext) -> InstructionSource:
    """A MULTIS annotation file (`cfg.annotations`) of task `cfg.task` over the folders of `cfg.modalities`."""
    if cfg.task not in get_args(Task):
        raise UserError(f"dataset {name}: unknown task {cfg.task!r}; known: {list(get_args(Task))}")
    media = build_media_loader(name, cfg, context.model)
    if media.modalities not in MODALITY_CODES or media.modalities not in MEDIA_PREFIXES:
        raise UserError(
            f"dataset {name}: no stage-2 template for modalities {list(media.modalities)}; "
            f"known: {[list(m) for m in MODALITY_CODES]}"
        )
    if cfg.annotations is None:
        raise UserError(f"dataset {name}: annotations (the MULTIS JSON) is required")
    templates = load_task_templates(name, cfg)
    rows, bad_rows = parse_rows(
        cfg.annotations, read_annotation_list(cfg.annotations), row_parser(cfg.task), cfg.skip_bad_rows
    )
    return InstructionSource(name, rows, cfg.task, media, templates, context, bad_rows)
