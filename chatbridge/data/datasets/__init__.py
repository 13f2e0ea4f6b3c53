"""Dataset builders; importing this package registers `caption_json`, `multis_json` and `caption_shards`."""

from chatbridge.data.datasets import base, captions, instructions, shards, valor_opts

__all__ = ["base", "captions", "instructions", "shards", "valor_opts"]
