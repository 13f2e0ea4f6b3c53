"""Settings of the programs that use a model: generation (chat, demo, evaluation), the demo, and benchmarks.

They are sections of a run YAML (`generation`, `demo`, `evaluation`) assembled by `chatbridge.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from chatbridge.config_fields import at_least, path_field, require


@dataclass
class GenerationSettings:
    """How the chat, the demo and evaluation generate text (docs/reference/chatbridge.md §2.4 for the reference's)."""

    max_new_tokens: int = 300
    """Tokens generated per answer at most (the reference demo: 300)."""
    do_sample: bool = False
    """Sample instead of greedy/beam search (the reference always sampled)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 0.9
    """Nucleus sampling mass."""
    num_beams: int = 1
    """Beam search width (1: no beam search)."""
    repetition_penalty: float = 1.0
    """Penalty on repeated tokens (1: none)."""
    seed: int = 0
    """Seed of sampling: the same seed, prompt and settings give the same answer."""
    stop: str | None = None
    """An answer ends at this text; None: the chat template's (ChatBridge's turn separator `###`)."""
    max_context: int | None = None
    """Prompt + answer tokens at most; None: the LLM's `max_position_embeddings`."""
    overflow: Literal["truncate", "refuse"] = "truncate"
    """When a conversation outgrows the context: drop the oldest turns' text (never media or BOS), or refuse."""
    faithful: bool = False
    """Re-render and re-run the whole conversation every turn, tokenised as the reference chat did (no cache)."""

    def __post_init__(self) -> None:
        at_least(self, "generation", 1, "max_new_tokens", "num_beams", "max_context")
        require(self.temperature > 0, "generation.temperature", "be > 0", self.temperature)
        require(0 < self.top_p <= 1, "generation.top_p", "be in (0, 1]", self.top_p)
        require(self.repetition_penalty > 0, "generation.repetition_penalty", "be > 0", self.repetition_penalty)


@dataclass
class BenchmarkConfig:
    """One benchmark of an evaluation run, read from its official annotation files as distributed."""

    task: str = "captioning"
    """Registered evaluation task: captioning, open_qa, classification, multiple_choice, dialogue, synthetic_world."""
    format: str = "karpathy_caption"
    """Annotation format (a reader of `chatbridge.evaluation.benchmarks.READERS`)."""
    annotations: str | None = path_field("the benchmark's annotation file, as its authors distribute it")
    """The annotation file."""
    extra_annotations: str | None = path_field("the second annotation file the format needs")
    """VQA-style answers next to the questions, or MSVD-QA's video-name mapping."""
    reader_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the reader (split, image_pattern, folds, ...)."""
    image_root: str | None = path_field("the folder the benchmark's image names are relative to")
    """Image folder."""
    video_root: str | None = path_field("the folder the benchmark's video names (files or frame folders) are in")
    """Video folder."""
    audio_root: str | None = path_field("the folder the benchmark's audio names are relative to")
    """Audio folder; None for audio-visual benchmarks means each video's own sound track."""
    prompt: str = "{question}"
    """The question sent to the model; `{question}` is the item's question (captioning: the instruction itself)."""
    held_out: bool = True
    """Zero-shot: nothing of this benchmark is in the training mixture (MULTIS holds VQAv2, COCO, MSRVTT, AudioCaps)."""
    metrics: list[str] = field(default_factory=list)
    """Metrics to report; empty: the task's defaults."""
    max_items: int | None = None
    """Evaluate only the first items (quick checks); None: all."""
    batch_size: int = 8
    """Prompts generated together."""

    def __post_init__(self) -> None:
        at_least(self, "evaluation.benchmarks.<name>", 1, "batch_size", "max_items")


@dataclass
class EvaluationConfig:
    """What `evaluate.py` runs and where its predictions, metrics and table go."""

    benchmarks: dict[str, BenchmarkConfig] = field(default_factory=dict)
    """Named benchmarks."""
    output_dir: str = path_field(
        "a folder for predictions, metrics and the results table", default="outputs/eval", output=True
    )
    """Predictions (`<benchmark>/predictions.rank<r>.jsonl`), metrics and `results.md` go here."""


@dataclass
class DemoSettings:
    """The Gradio chat demo (`demo.py`)."""

    max_upload_megabytes: float = 50.0
    """Uploads larger than this are refused with a message in the chat."""
    concurrency: int = 1
    """Answers generated at once; further requests queue (sessions are never mixed)."""
    examples: bool = True
    """Offer clickable examples from the synthetic world when the config has one."""

    def __post_init__(self) -> None:
        require(self.max_upload_megabytes > 0, "demo.max_upload_megabytes", "be > 0", self.max_upload_megabytes)
        at_least(self, "demo", 1, "concurrency")
