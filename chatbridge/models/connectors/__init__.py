"""Connectors between encoders and the LLM projection; importing this package registers their builders."""

from chatbridge.models.connectors import linear, qformer

__all__ = ["linear", "qformer"]
