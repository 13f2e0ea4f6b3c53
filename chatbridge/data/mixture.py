"""Weighted multi-dataset batches for training: deterministic, split by rank, resumable at the exact batch.

Each step draws one dataset by weight (as the reference's MetaLoader does, so that every rank trains the same
modality in a step) and takes that dataset's next global batch from a seeded per-epoch permutation; each rank loads
its slice. Everything a step uses is a pure function of (seed, step, per-dataset cursors), so a run resumed from
the saved cursors sees exactly the batches the uninterrupted run would have seen, whatever the number of workers.

Loading runs in DataLoader workers when `run.num_workers > 0`: the main process hands each worker a batch
*specification* (dataset, indices, epoch); the worker decodes and collates it. Bad media are skipped and counted
per dataset and reason; a dataset that is almost all bad stops the run with a message naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from chatbridge.config import DatasetConfig, TrainConfig
from chatbridge.data.batching import batch_samples
from chatbridge.data.datasets.base import DataContext, MultimodalSample, SampleSource, SkipCounter
from chatbridge.data.datasets.valor_opts import datasets_from_valor_opts
from chatbridge.data.feature_cache import tower_fingerprint, use_feature_cache
from chatbridge.data.processors.errors import MediaError
from chatbridge.models.chatbridge import ChatBridgeBatch, ChatBridgeModel
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
    """A collated batch (None if every sample was bad) plus the skips met while loading it."""

    spec: BatchSpec
    batch: ChatBridgeBatch | None
    skipped: list[MediaError]


@dataclass
class MixtureMember:
    """One dataset of the mixture with what the loader needs to batch it."""

    source: SampleSource
    weight: float
    batch_size: int
    padding_side: str
    feature_modalities: tuple[str, ...] = ()


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
            if len(members[name].source) < members[name].batch_size * world_size:
                raise ValueError(f"dataset {name}: {len(members[name].source)} samples, fewer than one global batch")

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
        return self.members[name].batch_size * self.world_size

    def _rank_indices(self, name: str, cursor: Cursor) -> list[int]:
        permutation = torch.randperm(
            len(self.members[name].source), generator=seeded_generator(self.seed, name, cursor.epoch)
        )
        start = cursor.batch * self._global_batch(name) + self.rank * self.members[name].batch_size
        return permutation[start : start + self.members[name].batch_size].tolist()


def load_batch(spec: BatchSpec, member: MixtureMember, seed: int, bos_mask: bool, tokenizer: Any) -> LoadedBatch:
    """Decode and collate one specification; bad media are skipped (recorded by reason), never zero-filled."""
    samples: list[MultimodalSample] = []
    skipped: list[MediaError] = []
    for index in spec.indices:
        generator = seeded_generator(seed, spec.dataset, spec.epoch, index)
        try:
            samples.append(member.source.load(index, train=True, generator=generator))
        except MediaError as error:
            skipped.append(error)
    batch = None
    if samples:
        batch = batch_samples(samples, tokenizer, member.padding_side, bos_mask, member.feature_modalities)
    return LoadedBatch(spec, batch, skipped)


class _SpecStream(IterableDataset):
    """DataLoader workers load every `num_workers`-th specification (each worker one whole batch at a time)."""

    def __init__(self, mixture: MixtureLoader) -> None:
        self.mixture = mixture

    def __iter__(self) -> Iterator[LoadedBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mixture = self.mixture
        for position, spec in enumerate(mixture.plan.specs(mixture.step, mixture.cursors)):
            if position % workers == worker:
                yield load_batch(spec, mixture.members[spec.dataset], mixture.seed, mixture.bos_mask, mixture.tokenizer)


class MixtureLoader:
    """Iterator of `(dataset name, ChatBridgeBatch)` with `state_dict`/`load_state_dict` for exact resumption."""

    def __init__(
        self,
        members: dict[str, MixtureMember],
        tokenizer: Any,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        bos_mask: bool,
    ) -> None:  # noqa: PLR0913 - the loader's independent settings
        self.members, self.tokenizer, self.seed = members, tokenizer, seed
        self.num_workers, self.bos_mask = num_workers, bos_mask
        self.plan = BatchPlan(members, seed, rank, world_size)
        self.skips = SkipCounter()
        self.step, self.cursors = 0, {}
        self._stream: Iterator[LoadedBatch] | None = None
        self._loaded = 0

    def __iter__(self) -> MixtureLoader:
        return self

    def __next__(self) -> tuple[str, ChatBridgeBatch]:
        while True:
            loaded = next(self._batches())
            self._account(loaded)
            self.step, self.cursors = loaded.spec.step + 1, loaded.spec.cursors_after
            if loaded.batch is not None:
                return loaded.spec.dataset, loaded.batch

    def _batches(self) -> Iterator[LoadedBatch]:
        if self._stream is None:
            stream = _SpecStream(self)
            loader = DataLoader(
                stream,
                batch_size=None,
                num_workers=self.num_workers,
                persistent_workers=False,
                prefetch_factor=2 if self.num_workers else None,
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
    """The run's datasets: the YAML's `datasets`, plus those of the authors' data-opts JSON if one is given."""
    datasets = dict(config.datasets)
    if config.valor_data_opts:
        datasets |= datasets_from_valor_opts(config.valor_data_opts)
    if not datasets:
        raise ValueError("no datasets: set `datasets` in the run YAML or `valor_data_opts`")
    return datasets


def data_context(config: TrainConfig, cfg: DatasetConfig, tokenizer: Any, model: ChatBridgeModel) -> DataContext:
    """How many soft-token slots each media block of this dataset needs, from the model itself."""
    processor = cfg.processor

    def query_tokens(modality: str, num_items: int) -> int:
        if modality == "audio":
            per_item = model.audio_encoder.num_tokens(processor.target_length, processor.num_mel_bins)
        else:
            per_item = model.image_encoder.num_tokens
        return model.perceiver.num_output_tokens(num_items, per_item)

    return DataContext(tokenizer, query_tokens, config.model.max_txt_len, config.model.faithful, config.run.seed)


def build_train_mixture(  # noqa: PLR0913 - the run, the model and this process's place in it
    config: TrainConfig, tokenizer: Any, model: ChatBridgeModel, rank: int, world_size: int, fill_cache: bool = True
) -> MixtureLoader:
    """The training mixture of `config` for this rank; with `run.feature_cache`, cacheable media are read from
    the cache (filled first when `fill_cache`)."""
    members = {}
    fingerprint = functools.cache(lambda modality: tower_fingerprint(model, modality))  # hash each tower once
    for name, cfg in dataset_configs(config).items():
        source = DATASETS.get(cfg.builder)(name, cfg, data_context(config, cfg, tokenizer, model))
        padding = "left" if cfg.builder == "multis_json" else "right"  # stage 2 left-pads (spec 2.3.2)
        cached = ()
        if config.run.feature_cache:
            root = Path(config.run.feature_cache)
            cached = tuple(use_feature_cache(name, source, cfg.processor, model, root, fill_cache, fingerprint))
        members[name] = MixtureMember(source, cfg.weight, cfg.batch_size, padding, cached)
    return MixtureLoader(
        members,
        tokenizer,
        config.run.seed,
        rank,
        world_size,
        config.run.num_workers,
        config.model.faithful.bos_mask_on_padded_rows,
    )
