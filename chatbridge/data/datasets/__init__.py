"""Dataset builders; importing this package registers caption_json, multis_json, caption_shards and llava_json."""

from chatbridge.data.datasets import base, captions, instructions, llava, shards, valor_opts

__all__ = ["base", "captions", "instructions", "llava", "shards", "valor_opts"]
