"""Connectors between encoders and the LLM projection; importing this package registers their builders."""

from chatbridge.models.connectors import linear, pooled, qformer

__all__ = ["linear", "pooled", "qformer"]
