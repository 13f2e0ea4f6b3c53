"""Weighted multi-dataset batches for training: deterministic, split by rank, resumable at the exact batch.

Each step draws one dataset by weight (as the reference's MetaLoader does, so that every rank trains the same
modality in a step) and takes that dataset's next global batch from a seeded per-epoch permutation; each rank loads
its slice. Everything a step uses is a pure function of (seed, step, per-dataset cursors), so a run resumed from
the saved cursors sees exactly the batches the uninterrupted run would have seen, whatever the number of workers.

Loading runs in DataLoader workers when `run.num_workers > 0`: each worker walks the same deterministic plan and
loads every `num_workers`-th batch specification (dataset, indices, epoch), decoding and collating it. Everything a
worker holds is plain data (datasets, the tokenizer, the plan), so workers start with `fork` or `spawn` alike. Bad
media are skipped and counted per dataset and reason; a dataset that is almost all bad stops the run with a
message naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from chatbridge.config import DatasetConfig, TrainConfig, resolve_processor
from chatbridge.data.batch import ChatBridgeBatch
from chatbridge.data.collate import collate
from chatbridge.data.datasets.base import DataContext, SampleSource, SkipCounter
from chatbridge.data.datasets.valor_opts import datasets_from_valor_opts
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.sample import MultimodalSample
from chatbridge.errors import UserError
from chatbridge.registry import DATASETS

logger = logging.getLogger(__name__)
REPORT_EVERY = 100  # batches between skip reports in the log


@dataclass
class Cursor:
    """Position inside one dataset: epoch and global batches taken from it in that epoch."""

    epoch: int = 0
    batch: int = 0


@dataclass
class BatchSpec:
    """What one step loads on this rank, and the mixture position after it."""

    step: int
    dataset: str
    epoch: int
    indices: list[int]
    cursors_after: dict[str, Cursor] = field(default_factory=dict)


@dataclass
class LoadedBatch:
    """One step's micro-batches (empty if every sample was bad) plus the skips met while loading them."""

    spec: BatchSpec
    batches: list[ChatBridgeBatch]
    skipped: list[MediaError]


@dataclass
class MixtureMember:
    """One dataset of the mixture: its share, its batch size, and the micro-batches a step splits into.

    A step takes `batch_size * micro_batches` samples per rank in one draw and collates them as `micro_batches`
    batches of `batch_size`, so gradient accumulation computes exactly the combined batch.
    """

    source: SampleSource
    weight: float
    batch_size: int
    micro_batches: int = 1

    @property
    def step_size(self) -> int:
        """Samples per rank per step."""
        return self.batch_size * self.micro_batches


def seeded_generator(*parts: Any) -> torch.Generator:
    """A torch generator seeded from any tuple of values (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class BatchPlan:
    """The deterministic sequence of batch specifications for one rank."""

    def __init__(self, members: dict[str, MixtureMember], seed: int, rank: int, world_size: int) -> None:
        self.members, self.seed, self.rank, self.world_size = members, seed, rank, world_size
        self.names = sorted(members)
        self.weights = torch.tensor([members[name].weight for name in self.names], dtype=torch.float64)
        for name in self.names:
            if len(members[name].source) < members[name].step_size * world_size:
                raise UserError(
                    f"dataset {name}: {len(members[name].source)} samples, fewer than one global batch "
                    f"({members[name].step_size * world_size} = batch_size x grad_accum_steps x world size)"
                )

    def specs(self, step: int, cursors: dict[str, Cursor]) -> Iterator[BatchSpec]:
        """Specifications from `step` on, starting at `cursors` (not modified)."""
        cursors = copy.deepcopy(cursors)
        while True:
            name = self.names[int(torch.multinomial(self.weights, 1, generator=seeded_generator(self.seed, step)))]
            cursor = cursors.setdefault(name, Cursor())
            epoch, indices = cursor.epoch, self._rank_indices(name, cursor)
            cursor.batch += 1
            if (cursor.batch + 1) * self._global_batch(name) > len(self.members[name].source):  # drop_last
                cursors[name] = Cursor(epoch=epoch + 1)
            yield BatchSpec(step, name, epoch, indices, copy.deepcopy(cursors))
            step += 1

    def _global_batch(self, name: str) -> int:
        return self.members[name].step_size * self.world_size

    def _rank_indices(self, name: str, cursor: Cursor) -> list[int]:
        permutation = torch.randperm(
            len(self.members[name].source), generator=seeded_generator(self.seed, name, cursor.epoch)
        )
        share = self.members[name].step_size
        start = cursor.batch * self._global_batch(name) + self.rank * share
        return permutation[start : start + share].tolist()


@dataclass(frozen=True)
class TokenIds:
    """The special token ids `collate` needs (plain ints, so workers need no tokenizer)."""

    pad: int
    bos: int


def load_batch(spec: BatchSpec, member: MixtureMember, seed: int, ids: TokenIds) -> LoadedBatch:
    """Decode one specification and collate it as the step's micro-batches; bad media are skipped (recorded by
    reason), never zero-filled."""
    batches, skipped = [], []
    for start in range(0, len(spec.indices), member.batch_size):
        samples: list[MultimodalSample] = []
        for index in spec.indices[start : start + member.batch_size]:
            generator = seeded_generator(seed, spec.dataset, spec.epoch, index)
            try:
                samples.append(member.source.load(index, train=True, generator=generator))
            except MediaError as error:
                skipped.append(error)
        if samples:
            batches.append(collate(samples, ids.pad, ids.bos, member.source.bos_mask_on_padded_rows))
    return LoadedBatch(spec, batches, skipped)


@dataclass
class _SpecStream(IterableDataset):
    """DataLoader workers load every `num_workers`-th specification (each worker one whole batch at a time)."""

    plan: BatchPlan
    step: int
    cursors: dict[str, Cursor]
    seed: int
    ids: TokenIds

    def __iter__(self) -> Iterator[LoadedBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for position, spec in enumerate(self.plan.specs(self.step, self.cursors)):
            if position % workers == worker:
                yield load_batch(spec, self.plan.members[spec.dataset], self.seed, self.ids)


class MixtureLoader:
    """Iterator of `(dataset name, the step's micro-batches)` with `state_dict`/`load_state_dict` for exact
    resumption."""

    def __init__(  # noqa: PLR0913 - the loader's independent settings
        self,
        members: dict[str, MixtureMember],
        ids: TokenIds,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        start_method: str | None = None,
    ) -> None:
        self.members, self.ids, self.seed = members, ids, seed
        self.num_workers, self.start_method = num_workers, start_method
        self.plan = BatchPlan(members, seed, rank, world_size)
        self.skips = SkipCounter()
        self.step, self.cursors = 0, {}
        self._stream: Iterator[LoadedBatch] | None = None
        self._loaded = 0

    def __iter__(self) -> MixtureLoader:
        return self

    def __next__(self) -> tuple[str, list[ChatBridgeBatch]]:
        while True:
            loaded = next(self._batches())
            self._account(loaded)
            self.step, self.cursors = loaded.spec.step + 1, loaded.spec.cursors_after
            if loaded.batches:
                return loaded.spec.dataset, loaded.batches

    def _batches(self) -> Iterator[LoadedBatch]:
        if self._stream is None:
            stream = _SpecStream(self.plan, self.step, self.cursors, self.seed, self.ids)
            loader = DataLoader(
                stream,
                batch_size=None,
                num_workers=self.num_workers,
                persistent_workers=False,
                prefetch_factor=2 if self.num_workers else None,
                multiprocessing_context=self.start_method if self.num_workers else None,
            )
            self._stream = iter(loader)
        return self._stream

    def _account(self, loaded: LoadedBatch) -> None:
        name = loaded.spec.dataset
        for error in loaded.skipped:
            self.skips.record(name, error.reason, error.path)
        self.skips.attempt(name, len(loaded.spec.indices))
        self.skips.check_health()
        self._loaded += 1
        if self._loaded % REPORT_EVERY == 0 and self.skips.skipped:
            logger.warning("skipped samples so far: %s", self.skips.report())

    def close(self) -> None:
        """Stop the data-loader workers now (their iterator's finaliser shuts them down cleanly)."""
        self._stream = None

    def log_skipped(self) -> None:
        """Final report of skipped samples (silent when nothing was skipped)."""
        if self.skips.skipped:
            logger.warning("skipped samples: %s", self.skips.report())

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (prefetched batches are re-made on resume)."""
        return {"step": self.step, "cursors": {name: dataclasses.asdict(c) for name, c in self.cursors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.cursors = {name: Cursor(**cursor) for name, cursor in state["cursors"].items()}
        self._stream = None


def dataset_configs(config: TrainConfig) -> dict[str, DatasetConfig]:
    """The run's datasets: the YAML's `datasets`, plus those of the authors' data-opts JSON if one is given (their
    preprocessing resolved against the model's encoders like the YAML's)."""
    datasets = dict(config.datasets)
    if config.valor_data_opts:
        for name, dataset in datasets_from_valor_opts(config.valor_data_opts).items():
            where = f"{config.valor_data_opts}: {name}.processor"
            dataset.processor = resolve_processor(config.model, dataset.processor, dataset.modalities, where)
            datasets[name] = dataset
    if not datasets:
        raise UserError("no datasets: set `datasets` in the run YAML or `valor_data_opts`")
    return datasets


def build_datasets(config: TrainConfig, tokenizer: Any) -> dict[str, SampleSource]:
    """Every dataset of the run, built from the config alone (no model needed)."""
    context = DataContext(tokenizer, config.model)
    return {name: DATASETS.get(cfg.builder)(name, cfg, context) for name, cfg in dataset_configs(config).items()}


def build_train_mixture(  # noqa: PLR0913 - the run, its data and this process's place in it
    config: TrainConfig,
    sources: Mapping[str, SampleSource],
    tokenizer: Any,
    rank: int,
    world_size: int,
    start_method: str | None = None,
) -> MixtureLoader:
    """The training mixture of `sources` for this rank (weights and batch sizes from the config)."""
    datasets, accumulation = dataset_configs(config), config.run.grad_accum_steps
    members = {
        name: MixtureMember(source, datasets[name].weight, datasets[name].batch_size, accumulation)
        for name, source in sources.items()
    }
    ids = TokenIds(pad=tokenizer.pad_token_id, bos=tokenizer.bos_token_id)
    return MixtureLoader(members, ids, config.run.seed, rank, world_size, config.run.num_workers, start_method)
