"""Data pipeline; importing this package registers processors and dataset builders."""

from chatbridge.data import processors

__all__ = ["processors"]
