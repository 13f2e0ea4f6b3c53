"""Evaluation: registered tasks, metrics of the field's libraries, readers of the benchmarks' official files."""

from chatbridge.evaluation import tasks

__all__ = ["tasks"]
