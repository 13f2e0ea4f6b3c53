"""Model parts; importing this package registers their builders (explicitly, module by module)."""

from chatbridge.models import chatbridge, encoders, llm, perceiver

__all__ = ["chatbridge", "encoders", "llm", "perceiver"]
