"""Model parts; importing this package registers their builders (explicitly, module by module)."""

from chatbridge.models import chatbridge, connectors, encoders, llm

__all__ = ["chatbridge", "connectors", "encoders", "llm"]
