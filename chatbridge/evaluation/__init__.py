"""Evaluation: registered tasks, metrics of the field's libraries, readers of the benchmarks' official files."""

from chatbridge.evaluation import synthetic_world, tasks

__all__ = ["synthetic_world", "tasks"]
