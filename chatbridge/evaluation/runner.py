"""Running benchmarks: items sharded over ranks, predictions appended as they are made, metrics and a table at the end.

Every rank takes every `world_size`-th item and appends one JSON line per item to its own
`<output_dir>/<benchmark>/predictions.rank<r>.jsonl`, flushed as it goes; a restarted run skips the items any rank
already finished, so an interrupted evaluation loses at most one batch. Rank 0 then reads every rank's file and
writes `metrics.json` per benchmark and `results.md` for all of them. Metrics depend only on the set of records, so
any number of ranks (and any interruption) gives the same numbers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chatbridge.config import TrainConfig
from chatbridge.config_apps import BenchmarkConfig
from chatbridge.data.datasets.base import resolve_media
from chatbridge.data.processors.errors import MediaError
from chatbridge.errors import UserError
from chatbridge.evaluation.benchmarks import READERS, EvalItem
from chatbridge.evaluation.synthetic_world import type_table
from chatbridge.evaluation.tasks import Record, Task
from chatbridge.inference.engine import InferenceEngine
from chatbridge.inference.media import MediaFile, MediaInputError
from chatbridge.registry import TASKS
from chatbridge.training.distributed import DistributedContext, barrier

logger = logging.getLogger(__name__)
ROOTS = {"image": "image_root", "video": "video_root", "audio": "audio_root"}
RESULTS_FILE = "results.md"


@dataclass
class BenchmarkResult:
    """The numbers of one benchmark: metrics, how many items were scored, and how many were skipped and why."""

    name: str
    task: str
    held_out: bool
    scored: int
    skipped: dict[str, int]
    metrics: dict[str, Any]


def read_items(benchmark: BenchmarkConfig, where: str) -> list[EvalItem]:
    """The benchmark's items from its official files (the first `max_items` if set)."""
    if benchmark.format not in READERS:
        raise UserError(f"{where}.format: unknown format {benchmark.format!r}; known: {sorted(READERS)}")
    if benchmark.annotations is None:
        raise UserError(f"{where}.annotations is not set: the benchmark's annotation file")
    files = [benchmark.annotations] + ([benchmark.extra_annotations] if benchmark.extra_annotations else [])
    items = READERS[benchmark.format](*files, **benchmark.reader_options)
    return items[: benchmark.max_items] if benchmark.max_items is not None else items


def media_files(item: EvalItem, benchmark: BenchmarkConfig) -> list[MediaFile]:
    """Each medium of an item as a file: `<root>/<name>` (trying the usual suffixes). Audio without an audio root
    is the sound track of the item's video.

    Raises:
        MediaInputError: a medium is not found (the message names what was tried).
    """
    files = []
    for modality, name in item.media:
        folder = getattr(benchmark, ROOTS[modality])
        if modality == "audio" and folder is None and any(m == "video" for m, _ in item.media):
            modality_of_file, folder = "video", benchmark.video_root
        else:
            modality_of_file = modality
        if folder is None:
            raise MediaInputError(f"{ROOTS[modality]} is not set, but item {item.item_id} has {modality} {name!r}")
        try:
            path = resolve_media(modality_of_file, Path(folder), name)
        except MediaError as error:
            raise MediaInputError(f"item {item.item_id}: {error}") from None
        files.append(MediaFile(path, modality))
    return files


def finished_ids(folder: Path) -> set[str]:
    """Ids of every record any rank wrote (a torn last line from a killed run is ignored and redone)."""
    done = set()
    for path in folder.glob("predictions.rank*.jsonl"):
        for record in read_records(path):
            done.add(record["id"])
    return done


def read_records(path: Path) -> Iterator[Record]:
    """Complete JSON lines of a predictions file."""
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed mid-write


def drop_torn_tail(path: Path) -> None:
    """Cut a line left unfinished by a killed run, so the next record starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def append_records(path: Path, records: Sequence[Record]) -> None:
    """Append and flush to disk, so a killed run keeps every finished batch."""
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def batches(items: Sequence[EvalItem], size: int) -> Iterator[list[EvalItem]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def predict_shard(  # noqa: PLR0913 - one rank's share of one benchmark
    engine: InferenceEngine,
    task: Task,
    benchmark: BenchmarkConfig,
    items: Sequence[EvalItem],
    folder: Path,
    context: DistributedContext,
) -> None:
    """This rank's unfinished items, batch by batch; items with unusable media become error records."""
    done = finished_ids(folder)
    mine = [item for index, item in enumerate(items) if index % context.world_size == context.rank]
    todo = [item for item in mine if item.item_id not in done]
    output = folder / f"predictions.rank{context.rank}.jsonl"
    drop_torn_tail(output)
    progress = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=folder.name, disable=not context.is_main)
    for batch in batches(todo, benchmark.batch_size):
        usable, files, records = [], [], []
        for item in batch:
            try:
                files.append(media_files(item, benchmark))
                usable.append(item)
            except MediaInputError as error:
                records.append({"id": item.item_id, "error": str(error)})
        if usable:
            records += task.predict(engine, usable, files, benchmark)
        append_records(output, records)
        progress.update(len(batch))
    progress.close()


def score_benchmark(name: str, benchmark: BenchmarkConfig, items: Sequence[EvalItem], folder: Path) -> BenchmarkResult:
    """Metrics over every rank's records (rank 0, after all ranks finished)."""
    task = TASKS.get(benchmark.task)()
    records = {r["id"]: r for path in sorted(folder.glob("predictions.rank*.jsonl")) for r in read_records(path)}
    by_id = {item.item_id: item for item in items}
    scored = [record for record in records.values() if "error" not in record and record["id"] in by_id]
    skipped: dict[str, int] = {}
    for record in records.values():
        if "error" in record:
            reason = "unusable media"
            skipped[reason] = skipped.get(reason, 0) + 1
    if not scored:
        raise UserError(f"evaluation.benchmarks.{name}: no item could be evaluated ({skipped})")
    metrics = task.score(scored, by_id, benchmark.metrics or list(task.default_metrics))
    return BenchmarkResult(name, benchmark.task, benchmark.held_out, len(scored), skipped, metrics)


def evaluate(config: TrainConfig, engine: InferenceEngine, context: DistributedContext) -> list[BenchmarkResult]:
    """Run every benchmark of `config.evaluation`; rank 0 returns the results (other ranks an empty list)."""
    output = Path(config.evaluation.output_dir)
    results = []
    for name, benchmark in config.evaluation.benchmarks.items():
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        items = read_items(benchmark, f"evaluation.benchmarks.{name}")
        predict_shard(engine, TASKS.get(benchmark.task)(), benchmark, items, folder, context)
        barrier()
        if context.is_main:
            result = score_benchmark(name, benchmark, items, folder)
            (folder / "metrics.json").write_text(json.dumps(result.__dict__, indent=1, default=str) + "\n")
            results.append(result)
    if context.is_main:
        (output / RESULTS_FILE).write_text(results_table(results))
    return results


def results_table(results: Sequence[BenchmarkResult]) -> str:
    """A markdown table: one row per benchmark, its split (held-out = zero-shot), item count and metrics; then, for
    benchmarks scored per question type, a table of their types."""
    lines = ["| benchmark | task | split | items | metrics |", "|---|---|---|---|---|"]
    for result in results:
        values = ", ".join(
            f"{key} {value * 100:.1f}" if isinstance(value, float) else f"{key}: {value}"
            for key, value in result.metrics.items()
            if not isinstance(value, dict)
        )
        skipped = f" (+{sum(result.skipped.values())} skipped)" if result.skipped else ""
        split = "held-out" if result.held_out else "held-in"
        lines.append(f"| {result.name} | {result.task} | {split} | {result.scored}{skipped} | {values} |")
    tables = [type_table(result.name, result.metrics) for result in results if "by_type" in result.metrics]
    return "\n".join([*lines, *(f"\n{table}" for table in tables)]).rstrip("\n") + "\n"
