"""The weighted mixture: proportions, rank split, determinism, exact resumption, and worker-count independence."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import pytest
import torch

from chatbridge.config_loading import load_config
from chatbridge.data.batch import ChatBridgeBatch
from chatbridge.data.mixture import BatchPlan, MixtureMember, build_datasets, build_train_mixture
from chatbridge.models.llm import load_tokenizer
from chatbridge.synthetic.world import SCALES, ensure_world

REPO = Path(__file__).resolve().parents[1]
TINY_STAGE2 = REPO / "instructiontuning_configs" / "chatbridge_tiny_instructtuning.yaml"


class CountingSource:
    """A stand-in `SampleSource` of `size` samples (the plan only needs names and lengths)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def __len__(self) -> int:
        return self.size


def members(**spec: tuple[float, int, int]) -> dict[str, MixtureMember]:
    """name=(weight, batch size, dataset size)."""
    return {
        name: MixtureMember(CountingSource(name, size), weight, batch) for name, (weight, batch, size) in spec.items()
    }


def take(plan: BatchPlan, count: int, step: int = 0, cursors: dict | None = None) -> list:
    specs = plan.specs(step, cursors or {})
    return [next(specs) for _ in range(count)]


def test_datasets_are_drawn_in_proportion_to_their_weights():
    plan = BatchPlan(members(a=(1.0, 2, 50), b=(2.0, 4, 80), c=(7.0, 1, 30)), seed=0, rank=0, world_size=1)
    counts = Counter(spec.dataset for spec in take(plan, 5000))
    for name, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert counts[name] / 5000 == pytest.approx(share, abs=0.02)


def test_each_dataset_keeps_its_own_batch_size_and_epochs_cover_it_without_repeats():
    plan = BatchPlan(members(a=(1.0, 3, 10), b=(1.0, 2, 8)), seed=1, rank=0, world_size=1)
    specs = take(plan, 40)
    assert {len(s.indices) for s in specs if s.dataset == "a"} == {3}
    assert {len(s.indices) for s in specs if s.dataset == "b"} == {2}
    first_epoch_a = [i for s in specs if s.dataset == "a" and s.epoch == 0 for i in s.indices]
    assert len(first_epoch_a) == 9 and len(set(first_epoch_a)) == 9  # 3 full batches of 10, drop_last


def test_ranks_split_the_global_batch_and_agree_on_the_dataset():
    spec = dict(a=(1.0, 2, 40), b=(3.0, 3, 60))
    ranks = [take(BatchPlan(members(**spec), seed=5, rank=rank, world_size=2), 30) for rank in (0, 1)]
    single = take(BatchPlan(members(a=(1.0, 4, 40), b=(3.0, 6, 60)), seed=5, rank=0, world_size=1), 30)
    for zero, one, both in zip(*ranks, single, strict=True):
        assert zero.dataset == one.dataset == both.dataset
        assert not set(zero.indices) & set(one.indices)
        assert zero.indices + one.indices == both.indices  # the two ranks together see the combined batch


def test_the_plan_is_a_pure_function_of_seed_and_position():
    plan = BatchPlan(members(a=(1.0, 2, 9), b=(1.0, 1, 5)), seed=3, rank=0, world_size=1)
    assert take(plan, 25) == take(plan, 25)
    other_seed = BatchPlan(members(a=(1.0, 2, 9), b=(1.0, 1, 5)), seed=4, rank=0, world_size=1)
    assert [s.indices for s in take(plan, 25)] != [s.indices for s in take(other_seed, 25)]


def test_resuming_from_a_saved_position_gives_the_same_next_batches():
    plan = BatchPlan(members(a=(1.0, 2, 9), b=(2.0, 1, 5)), seed=3, rank=0, world_size=1)
    uninterrupted = take(plan, 30)
    saved = uninterrupted[16]  # the position after step 16, as a checkpoint stores it
    resumed = take(plan, 13, step=saved.step + 1, cursors=saved.cursors_after)
    assert resumed == uninterrupted[17:]


def test_a_dataset_smaller_than_one_global_batch_is_refused():
    with pytest.raises(ValueError, match="dataset a: 3 samples, fewer than one global batch"):
        BatchPlan(members(a=(1.0, 2, 3)), seed=0, rank=0, world_size=2)


# ----------------------------------------------------------------------------------------------- data-loader workers

STEPS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SCALES["tiny"])


def first_batches(world, llm_dir: Path, num_workers: int) -> list[tuple[str, ChatBridgeBatch]]:
    """The first `STEPS` batches of the tiny stage-2 mixture, loaded by `num_workers` spawned workers."""
    options = [f"synthetic.world={world.root}", f"model.llm.path={llm_dir}", f"run.num_workers={num_workers}"]
    config = load_config(TINY_STAGE2, options)
    assert config.run.num_workers == num_workers
    tokenizer = load_tokenizer(config.model.llm.path)
    sources = build_datasets(config, tokenizer)
    mixture = build_train_mixture(config, sources, tokenizer, rank=0, world_size=1, start_method="spawn")
    assert (mixture.num_workers, mixture.start_method) == (num_workers, "spawn")
    before = set(multiprocessing.active_children())
    batches = [next(mixture)]
    spawned = [p for p in multiprocessing.active_children() if p not in before and p.name.startswith("Spawn")]
    assert len(spawned) == num_workers  # the loading really happens in that many spawned processes
    batches += [next(mixture) for _ in range(STEPS - 1)]
    return [(name, batch) for name, [batch] in batches]


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(first) == sorted(second), what
    for key in first:
        assert torch.equal(first[key], second[key]), f"{what}[{key}]"


def test_spawned_workers_yield_exactly_the_single_process_batches(world, tiny_llm_dir):
    serial = first_batches(world, tiny_llm_dir, num_workers=0)
    parallel = first_batches(world, tiny_llm_dir, num_workers=2)
    assert [name for name, _ in parallel] == [name for name, _ in serial]
    assert len({name for name, _ in serial}) > 1  # the steps really mix datasets
    for step, ((name, expected), (_, batch)) in enumerate(zip(serial, parallel, strict=True)):
        where = f"step {step} ({name})"
        for field in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(getattr(batch, field), getattr(expected, field)), f"{where}: {field}"
        assert_same_tensors(batch.media, expected.media, f"{where}: media")
        assert_same_tensors(batch.features, expected.features, f"{where}: features")
        assert_same_tensors(batch.soft_token_positions, expected.soft_token_positions, f"{where}: positions")
