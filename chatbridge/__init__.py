"""ChatBridge: bridging modalities with a large language model as a language catalyst (arXiv 2305.16103)."""

__version__ = "0.1.0"
