"""Data pipeline; importing this package registers processors and dataset builders."""

from chatbridge.data import chat_templates, datasets, processors

__all__ = ["chat_templates", "datasets", "processors"]
