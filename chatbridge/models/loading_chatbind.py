"""ChatBind's released artefacts in our format (docs/reference/chatbind.md §6.3, §6.7, §10).

* The stage-1 file (`chatbind-7b-pretrain.bin`, or a run's `mm_projector.bin`): a `torch.save` dict of
  `model.mm_projector.{weight,bias}` and, usually, `model.embed_tokens.weight`. The projector is our `llm_proj`;
  the last rows of the embedding are the trained `<im_start>`/`<im_end>` rows, our `token_rows` (the reference took
  the final two rows of a full matrix, or a two-row matrix as it is, §6.3). Keys are matched in full, not by their
  last component (§9.9), and anything else in the file is an error.
* The stage-2 delta (`dreamerlin/chatbind-7b-delta`) against the original LLaMA-7B: for every tensor of both, target
  = base + delta in fp16; `embed_tokens` and `lm_head` have more rows than the base, and only the leading block is a
  difference (the added tokens' rows are plain values); `model.mm_projector.*` is absolute; `rotary_emb.inv_freq`
  buffers are dropped. `merge_delta` writes the result as a plain LLaMA folder (safetensors, one shard per delta
  shard, reading the base lazily, so a 7B merge never holds two models in memory) and returns the projector.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from chatbridge.config import LLMConfig, TrainConfig
from chatbridge.config_loading import save_config
from chatbridge.models.loading import CONFIG_FILE, WEIGHTS_FILE, write_our_weights

PROJECTOR_KEYS = {"model.mm_projector.weight": "llm_proj.weight", "model.mm_projector.bias": "llm_proj.bias"}
"""Released projector key -> our parameter."""
EMBED_KEY = "model.embed_tokens.weight"
RESIZED_KEYS = (EMBED_KEY, "lm_head.weight")
"""Tensors whose delta has more rows than the base: only the base's rows are differences."""
DROPPED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers of transformers 4.28 checkpoints that current LLaMA recomputes."""
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def read_projector_file(path: str | os.PathLike, llm: LLMConfig) -> dict[str, Tensor]:
    """The released stage-1 file's tensors in our names: `llm_proj.*` and, if the file has the embedding,
    `token_rows.weight` (fp32).

    Raises:
        ValueError: a projector key is missing, a key is unknown, the token rows are not the last added tokens, or
            the embedding has neither the full vocabulary's rows nor exactly the token rows' (names the file).
    """
    name = Path(path).name
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    missing = sorted(PROJECTOR_KEYS.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - PROJECTOR_KEYS.keys() - {EMBED_KEY})
    if missing or unexpected:
        raise ValueError(f"{name}: not a ChatBind projector file: missing {missing}, unexpected {unexpected}")
    tensors = {ours: state_dict[key].float() for key, ours in PROJECTOR_KEYS.items()}
    if EMBED_KEY in state_dict and llm.token_rows:
        tensors["token_rows.weight"] = _token_rows(state_dict[EMBED_KEY], llm, name)
    return tensors


def _token_rows(embedding: Tensor, llm: LLMConfig, name: str) -> Tensor:
    rows = len(llm.token_rows)
    if list(llm.token_rows) != list(llm.added_tokens[-rows:]):
        raise ValueError(f"model.llm.token_rows {llm.token_rows} must be the last model.llm.added_tokens")
    if embedding.shape[0] < rows:
        raise ValueError(f"{name}: {EMBED_KEY} has {embedding.shape[0]} rows, fewer than the {rows} token rows")
    return embedding[-rows:].float()


def convert_projector(source: Path, target: Path, config: TrainConfig) -> Path:
    """The released stage-1 file -> our checkpoint folder (`model.checkpoint` of stage 2)."""
    target.mkdir(parents=True, exist_ok=True)
    write_our_weights(read_projector_file(source, config.model.llm), target / WEIGHTS_FILE)
    save_config(config, target / CONFIG_FILE)
    return target


class WeightsFolder:
    """The tensors of a Hugging Face weights folder (safetensors or PyTorch `.bin` shards), read by name.

    safetensors are read lazily and `.bin` shards memory-mapped, so only the tensors that are used take memory.
    """

    def __init__(self, folder: Path) -> None:
        self.shards = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        if not self.shards:
            raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
        self._handles = [
            safe_open(shard, framework="pt")
            if shard.suffix == ".safetensors"
            else torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
            for shard in self.shards
        ]
        self.shard_of = {key: index for index, handle in enumerate(self._handles) for key in handle.keys()}

    def shard_keys(self, index: int) -> list[str]:
        return [key for key, shard in self.shard_of.items() if shard == index]

    def __getitem__(self, key: str) -> Tensor:
        handle = self._handles[self.shard_of[key]]
        return handle[key] if isinstance(handle, dict) else handle.get_tensor(key)


def merge_delta(base: Path, delta: Path, target: Path, llm: LLMConfig) -> dict[str, Tensor]:
    """Apply a ChatBind delta to a LLaMA-7B folder; write the merged LLaMA to `target`; return the tensors of our
    checkpoint: `llm_proj.*` and, for `llm.token_rows`, the trained `<im_start>`/`<im_end>` rows.

    `target` gets the base's `config.json` with the delta's vocabulary size, its tokenizer files (our tokenizer adds
    `llm.added_tokens` itself), and one fp16 safetensors shard per delta shard with an index.

    Raises:
        ValueError: the keys of base and delta differ (named), a shape does not fit, or the vocabulary size is not
            the base tokenizer's plus `added_tokens` (then the delta was made with the other LLaVA version).
    """
    base_weights, delta_weights = WeightsFolder(base), WeightsFolder(delta)
    llm_keys = {key for key in delta_weights.shard_of if not key.endswith(DROPPED_SUFFIXES)} - PROJECTOR_KEYS.keys()
    base_keys = {key for key in base_weights.shard_of if not key.endswith(DROPPED_SUFFIXES)}
    no_projector = sorted(PROJECTOR_KEYS.keys() - delta_weights.shard_of.keys())
    if llm_keys != base_keys or no_projector:
        raise ValueError(
            f"{delta} does not fit {base}: only in the delta {sorted(llm_keys - base_keys)[:5]}, only in the base "
            f"{sorted(base_keys - llm_keys)[:5]}, projector keys missing {no_projector}"
        )
    target.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for index in range(len(delta_weights.shards)):
        keys = [key for key in delta_weights.shard_keys(index) if key in llm_keys]
        merged = {key: _merged(base_weights[key], delta_weights[key], key) for key in keys}
        name = f"model-{index + 1:05d}-of-{len(delta_weights.shards):05d}.safetensors"
        save_file(merged, target / name, {"format": "pt"})
        weight_map |= dict.fromkeys(merged, name)
    index_file = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (target / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2) + "\n")
    embedding = delta_weights[EMBED_KEY]  # its added tokens' rows are absolute values
    _write_llm_files(base, target, embedding.shape[0], llm.added_tokens)
    tensors = {ours: delta_weights[key].float() for key, ours in PROJECTOR_KEYS.items()}
    if llm.token_rows:
        tensors["token_rows.weight"] = _token_rows(embedding, llm, delta.name)
    return tensors


def _merged(base: Tensor, delta: Tensor, key: str) -> Tensor:
    """base + delta in fp16; for the resized embedding and head only the base's rows are differences."""
    merged = delta.to(torch.float16).clone()
    if key in RESIZED_KEYS and delta.shape[1:] == base.shape[1:] and delta.shape[0] >= base.shape[0]:
        merged[: base.shape[0]] += base.to(torch.float16)
    elif delta.shape == base.shape:
        merged += base.to(torch.float16)
    else:
        raise ValueError(f"{key}: delta {tuple(delta.shape)} does not fit base {tuple(base.shape)}")
    return merged.contiguous()


def _write_llm_files(base: Path, target: Path, vocab: int, added_tokens: Sequence[str]) -> None:
    """The base's config (with the merged vocabulary) and tokenizer files next to the merged weights."""
    base_vocab = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model")).get_piece_size()
    if base_vocab + len(added_tokens) != vocab:
        raise ValueError(
            f"the delta has {vocab} embedding rows but the base tokenizer {base_vocab} + {len(added_tokens)} added "
            "tokens: use the ChatBind preset of the other LLaVA version (v0: 4 added tokens, 32004 rows; v1: 3, 32003)"
        )
    config = json.loads((base / "config.json").read_text())
    config |= {"vocab_size": vocab, "torch_dtype": "float16"}
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, target / name)


def convert_delta(base: Path, delta: Path, target: Path, config: TrainConfig) -> tuple[Path, Path]:
    """LLaMA-7B + the released delta -> `target/llm` (merged LLaMA folder) and `target/chatbind` (our checkpoint of
    the projector and token rows, with its config pointing at both); returns the two folders."""
    llm_folder, checkpoint = target / "llm", target / "chatbind"
    tensors = merge_delta(base, delta, llm_folder, config.model.llm)
    config.model.llm.path, config.model.checkpoint = str(llm_folder), str(checkpoint)
    checkpoint.mkdir(parents=True, exist_ok=True)
    write_our_weights(tensors, checkpoint / WEIGHTS_FILE)
    save_config(config, checkpoint / CONFIG_FILE)
    return llm_folder, checkpoint
