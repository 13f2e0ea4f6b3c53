"""Data pipeline; importing this package registers processors and dataset builders."""

from chatbridge.data import datasets, processors

__all__ = ["datasets", "processors"]
