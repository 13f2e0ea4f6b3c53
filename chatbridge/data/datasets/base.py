"""What every dataset shares: the sample contract, annotation-row validation, media resolution and skip accounting.

A dataset here is a map-style `SampleSource`: `load(index, train, generator)` turns one annotation row into a
model-ready `MultimodalSample` (token ids with placeholder slots, labels, media tensors). Two rules the reference
broke shape this module:

* Bad annotation rows are found when the dataset is built, not at step 40,000: each row is parsed once by the
  dataset's row parser, and a malformed one either stops the build with its file, row and problem, or (with
  `skip_bad_rows`) is dropped and counted.
* Bad media never become zeros (docs/reference/chatbridge.md §1.4, §7.3): a missing or undecodable file raises
  `MediaError`, the mixture skips the sample and records it in a `SkipCounter`, and `check_health` stops a run
  whose data is mostly broken instead of training on the few samples that happen to load.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor
from transformers import PreTrainedTokenizer

from chatbridge.config import DatasetConfig, Modality, ModelConfig, ProcessorConfig
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.sample import Medium, MultimodalSample
from chatbridge.errors import UserError
from chatbridge.registry import PROCESSORS

logger = logging.getLogger(__name__)
RowT = TypeVar("RowT")

ID_KEYS = ("video_id", "image_id")
"""Annotation keys holding the media id, in order of precedence (MULTIS uses `video_id` for audio clips too)."""
MEDIA_SUFFIXES: dict[Modality, tuple[str, ...]] = {
    "image": ("", ".jpg", ".JPEG"),
    "video": ("", ".mp4"),
    "audio": ("", ".wav", ".mp3", ".flac"),
}
"""Suffixes tried after `root/id`, in order (§4.4; `.JPEG` is the reference's `.jpg -> .JPEG` retry)."""
ROOT_FIELDS: dict[Modality, str] = {"image": "image_root", "video": "video_root", "audio": "audio_root"}
"""The `DatasetConfig` field holding each modality's media folder."""


@dataclass(frozen=True)
class DataContext:
    """What datasets need from the run, handed to every builder; plain data, so datasets pickle.

    Attributes:
        tokenizer: The LLM's tokenizer (`chatbridge.models.llm.load_tokenizer`).
        model: The model config: how many soft tokens each medium becomes (`ModelConfig.soft_tokens`, computed
            without building a model), `max_txt_len` and the reference quirks in `faithful`.
    """

    tokenizer: PreTrainedTokenizer
    model: ModelConfig


class SampleSource(Protocol):
    """A map-style dataset of `MultimodalSample`s; the mixture does shuffling, rank splits and skipping."""

    name: str

    def __len__(self) -> int: ...

    bos_mask_on_padded_rows: bool
    """The reference's BOS quirk applies to this dataset's batches (stage-2 data under the faithful preset)."""

    def load(self, index: int, train: bool, generator: torch.Generator) -> MultimodalSample:
        """Sample `index`; all randomness (frames, segments, templates, caption choice) comes from `generator`.

        Raises:
            MediaError: a media file of the sample is missing or unusable.
        """
        ...


# ----------------------------------------------------------------------------------------------- annotation rows


class RowError(ValueError):
    """A malformed annotation row: `kind` is the short, countable problem, `detail` says what exactly is wrong."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


def read_annotation_list(path: str | Path) -> list[Any]:
    """A JSON annotation file that must hold a list (VALOR and MULTIS files both do).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a list; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of annotation objects, got {type(rows).__name__}")
    return rows


def parse_rows(
    path: str | Path, rows: Sequence[Any], parse: Callable[[Any], RowT], skip_bad_rows: bool
) -> tuple[list[RowT], dict[str, int]]:
    """Parses every row with `parse`, which raises `RowError` for a malformed one.

    Row numbers are 0-based positions in the JSON list (what `rows[i]` in Python or `jq '.[i]'` shows).

    Returns:
        The parsed good rows in file order, and problem kind -> number of dropped rows (empty if none).

    Raises:
        ValueError: a malformed row and not `skip_bad_rows`; names the file, the first bad row, its problem and
            how many rows are bad in total.
    """
    parsed, bad = [], Counter()
    first_error = ""
    for number, row in enumerate(rows):
        try:
            parsed.append(parse(row))
        except RowError as error:
            bad[error.kind] += 1
            first_error = first_error or f"{path}: row {number}: {error}"
    if bad and not skip_bad_rows:
        raise UserError(
            f"{first_error} ({sum(bad.values())} malformed rows in total; "
            "set skip_bad_rows: true to drop and count them)"
        )
    if bad:
        logger.warning("%s: dropped %d malformed rows: %s", path, sum(bad.values()), format_counts(bad))
    return parsed, dict(bad)


def row_media_id(row: Any) -> str:
    """The media id of an annotation row: `video_id`, else `image_id`, a non-empty string."""
    if not isinstance(row, dict):
        raise RowError("not an object", f"got {type(row).__name__} {str(row)[:60]!r}")
    for key in ID_KEYS:
        if key in row:
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise RowError("missing id", f"{key} must be a non-empty string, got {value!r}")
            return value
    raise RowError("missing id", f"no {' or '.join(ID_KEYS)}")


def text_choices(row: Mapping[str, Any], key: str, kind: str) -> tuple[str, ...]:
    """`row[key]` as a tuple of non-empty strings: one string, or a non-empty list of them."""
    value = row.get(key)
    choices = [value] if isinstance(value, str) else value
    if not isinstance(choices, list) or not choices:
        raise RowError(kind, f"{key} must be a string or a non-empty list of strings, got {value!r}")
    if not all(isinstance(choice, str) and choice.strip() for choice in choices):
        raise RowError(kind, f"{key} has an empty or non-string entry: {value!r}")
    return tuple(choices)


def format_counts(counts: Mapping[str, int]) -> str:
    """`missing: 12, undecodable: 7`: largest first, ties by name."""
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(counts.items(), key=lambda kc: (-kc[1], kc[0])))


# ----------------------------------------------------------------------------------------------- randomness


def pick_index(count: int, train: bool, generator: torch.Generator) -> int:
    """Which of `count` alternatives (captions, QA pairs) to use: random in training, the first at evaluation."""
    if not train or count == 1:
        return 0
    return int(torch.randint(count, (), generator=generator))


def python_rng(generator: torch.Generator) -> random.Random:
    """A `random.Random` seeded from `generator`, for helpers that take one (`templates.sample_instruction`)."""
    return random.Random(int(torch.randint(2**62, (), generator=generator)))


# ----------------------------------------------------------------------------------------------- media


def resolve_media(modality: Modality, root: Path, media_id: str) -> Path:
    """The file (or frame folder) of `media_id`: `root/id`, then `root/id` + each of `MEDIA_SUFFIXES[modality]`.

    Unlike the reference, suffix retries change only the end of the name (its `replace('.wav', '.mp3')` rewrote
    the whole path, §7.3), and ids of images that end in `.jpg` also try `.JPEG` (ImageNet's spelling).

    Raises:
        MediaError: "missing", listing every path tried.
    """
    names = [media_id + suffix for suffix in MEDIA_SUFFIXES[modality]]
    if media_id.endswith(".jpg") and modality == "image":
        names.append(media_id.removesuffix(".jpg") + ".JPEG")
    candidates = [root / name for name in dict.fromkeys(names)]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise MediaError("missing", root / media_id, "tried " + ", ".join(str(c) for c in candidates))


class Processor(Protocol):
    """A registered media processor: one call signature, and the shape of what it returns."""

    block_shape: tuple[int, ...]

    def __call__(self, source: Any, train: bool, generator: torch.Generator | None) -> Tensor: ...


class FeatureReader(Protocol):
    """Reads a medium's cached encoder features (`chatbridge.data.feature_cache.FeatureCache`)."""

    def read(self, media_path: Path) -> Tensor: ...


class MediaLoader:
    """Loads the media of one sample for every modality of a dataset, from one shared id.

    A (video, audio) dataset loads `video_root/id` and `audio_root/id(.wav)`: a video with its background audio.
    Modalities with a feature cache attached (`with_feature_caches`) are read from it instead of being decoded.

    Args:
        roots: modality -> media folder, in placeholder order.
        processors: modality -> processor built from the dataset's `ProcessorConfig`.
        soft_tokens: modality -> soft tokens one medium of it becomes.
        feature_caches: modality -> reader of cached encoder features.
    """

    def __init__(
        self,
        roots: Mapping[Modality, Path],
        processors: Mapping[Modality, Processor],
        soft_tokens: Mapping[Modality, int],
        feature_caches: Mapping[Modality, FeatureReader] | None = None,
    ) -> None:
        if list(roots) != list(processors):
            raise UserError(f"roots {list(roots)} and processors {list(processors)} must list the same modalities")
        self.roots = dict(roots)
        self.processors = dict(processors)
        self.soft_tokens = dict(soft_tokens)
        self.feature_caches = dict(feature_caches or {})

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """The modalities of every sample, in placeholder order."""
        return tuple(self.roots)

    def with_feature_caches(self, caches: Mapping[Modality, FeatureReader]) -> MediaLoader:
        """The same loader, reading `caches`' modalities from their feature caches."""
        return MediaLoader(self.roots, self.processors, self.soft_tokens, caches)

    def load(self, media_id: str, train: bool, generator: torch.Generator) -> list[Medium]:
        """One medium per modality, in placeholder order.

        Raises:
            MediaError: a file is missing or unusable (or has no cache entry).
        """
        media = []
        for modality, root in self.roots.items():
            path = resolve_media(modality, root, media_id)
            if modality in self.feature_caches:
                media.append(Medium(modality, self.feature_caches[modality].read(path), cached=True))
            else:
                media.append(Medium(modality, self.processors[modality](path, train, generator)))
        return media

    def soft_tokens_of(self, media: Sequence[Medium]) -> list[int]:
        """Soft-token slots each of `media` needs."""
        return [self.soft_tokens[medium.modality] for medium in media]


def build_processor(modality: Modality, cfg: ProcessorConfig) -> Processor:
    """The registered processor `cfg` names for `modality` (the routed encoder's choice unless set)."""
    name = getattr(cfg, f"{modality}_processor")
    if name is None:
        raise UserError(
            f"processor.{modality}_processor is unset: route {modality!r} to an encoder in model.routes, "
            "or name a processor"
        )
    return PROCESSORS.get(name)(cfg)


def soft_token_counts(model: ModelConfig, processors: Mapping[Modality, Processor]) -> dict[Modality, int]:
    """Soft tokens per medium of each modality, from the config alone (no model is built)."""
    return {modality: model.soft_tokens(modality, processor.block_shape) for modality, processor in processors.items()}


def check_modalities(name: str, modalities: Sequence[str]) -> tuple[Modality, ...]:
    """`cfg.modalities` as a tuple; raises ValueError naming the dataset for an empty, repeated or unknown entry."""
    unknown = [modality for modality in modalities if modality not in ROOT_FIELDS]
    if not modalities or unknown or len(set(modalities)) != len(modalities):
        raise UserError(
            f"dataset {name}: modalities must be distinct entries of {list(ROOT_FIELDS)}, got {list(modalities)}"
        )
    return tuple(modalities)


def build_media_loader(name: str, cfg: DatasetConfig, model: ModelConfig) -> MediaLoader:
    """The media loader of a JSON dataset; raises ValueError naming the dataset if a modality has no folder."""
    roots = {}
    for modality in check_modalities(name, cfg.modalities):
        root = getattr(cfg, ROOT_FIELDS[modality])
        if root is None:
            raise UserError(f"dataset {name}: {ROOT_FIELDS[modality]} is required for {modality} media")
        roots[modality] = Path(root)
    processors = {modality: build_processor(modality, cfg.processor) for modality in roots}
    return MediaLoader(roots, processors, soft_token_counts(model, processors))


# ----------------------------------------------------------------------------------------------- skip accounting


class SkipCounter:
    """Counts load attempts and skipped samples per dataset and reason, and stops runs on mostly-broken data.

    The caller (the mixture) counts every load with `attempt(name)` (or `attempt(name, batch_size)`) and every
    `MediaError` it catches with `record(name, error.reason, error.path)`.

    Attributes:
        attempted: dataset name -> load attempts (successes and skips).
        skipped: dataset name -> reason -> skipped samples.
        examples: dataset name -> reason -> path of the first sample skipped for it, for error messages.
    """

    def __init__(self) -> None:
        self.attempted: Counter[str] = Counter()
        self.skipped: dict[str, Counter[str]] = {}
        self.examples: dict[str, dict[str, str]] = {}

    def attempt(self, name: str, count: int = 1) -> None:
        """`count` load attempts of dataset `name`, whatever their outcome."""
        self.attempted[name] += count

    def record(self, name: str, reason: str, path: str | None = None) -> None:
        """One sample of dataset `name` skipped for `reason` (its attempt is counted by `attempt`)."""
        self.skipped.setdefault(name, Counter())[reason] += 1
        if path is not None:
            self.examples.setdefault(name, {}).setdefault(reason, path)

    def report(self) -> str:
        """One line per dataset with attempts, e.g. `images: 3 of 100 skipped (missing: 2, undecodable: 1)`."""
        lines = []
        for name in sorted(self.attempted):
            reasons = self.skipped.get(name, Counter())
            detail = f" ({format_counts(reasons)})" if reasons else ""
            lines.append(f"{name}: {sum(reasons.values())} of {self.attempted[name]} skipped{detail}")
        return "\n".join(lines)

    def check_health(self, min_attempts: int = 20, max_bad_fraction: float = 0.9) -> None:
        """Raises RuntimeError for the first dataset with at least `min_attempts` attempts of which more than
        `max_bad_fraction` were skipped: such data is misconfigured (wrong root, wrong ids), not noisy."""
        for name in sorted(self.attempted):
            attempts, bad = self.attempted[name], sum(self.skipped.get(name, Counter()).values())
            if attempts >= min_attempts and bad > max_bad_fraction * attempts:
                examples = "; ".join(f"{reason} {path!r}" for reason, path in self.examples.get(name, {}).items())
                raise RuntimeError(
                    f"dataset {name}: {bad} of {attempts} samples unusable ({format_counts(self.skipped[name])}); "
                    "check image_root / video_root / audio_root and the ids in the annotations"
                    + (f", e.g. {examples}" if examples else "")
                )
