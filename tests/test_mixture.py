"""The weighted mixture: proportions, rank split, determinism and exact resumption."""

from __future__ import annotations

from collections import Counter

import pytest

from chatbridge.data.mixture import BatchPlan, MixtureMember


class CountingSource:
    """A stand-in `SampleSource` of `size` samples (the plan only needs names and lengths)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def __len__(self) -> int:
        return self.size


def members(**spec: tuple[float, int, int]) -> dict[str, MixtureMember]:
    """name=(weight, batch size, dataset size)."""
    return {
        name: MixtureMember(CountingSource(name, size), weight, batch, "right")
        for name, (weight, batch, size) in spec.items()
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
