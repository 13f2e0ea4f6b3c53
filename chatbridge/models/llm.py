"""The frozen causal language model and its tokenizer, loaded from a local Hugging Face folder.

No prompt logic lives here: templates are in `chatbridge/data/templates.py` and tokenisation of training samples in
`chatbridge/data/collate.py`. This module only knows how to turn a folder into `(model, tokenizer)`.

Tokenizer fidelity: the reference (transformers 4.28, `LlamaTokenizer(use_fast=False)`) sends every separately
encoded text chunk straight to sentencepiece, so each chunk gets sentencepiece's dummy prefix "▁". transformers 5 has
no slow LLaMA tokenizer any more; its `LlamaTokenizer` is a `tokenizers` BPE converted from `tokenizer.model`, and
even with `legacy=True` it drops the dummy prefix of chunks that start with a space (" and its background audio: ")
and splits user-defined pieces differently (checked on transformers 5.23). `LegacyLlamaTokenizer` below therefore
calls `sentencepiece.SentencePieceProcessor` directly, which is exactly what the 4.28 slow tokenizer did.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import peft
import sentencepiece as spm
import torch
from transformers import (
    AddedToken,
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizer,
)
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from chatbridge.config import LLMConfig, LoraConfig, Precision
from chatbridge.models.layers import TORCH_DTYPES
from chatbridge.registry import LLMS

_PATH_KEY = "model.llm.path"
NEW_ROWS_SEED = 0
"""Seed of the random rows of added tokens: they are not in stage-1 checkpoints, so a rebuild must redraw them."""


class LegacyLlamaTokenizer(SentencePieceBackend):
    """LLaMA's slow sentencepiece tokenizer with transformers-4.28 semantics.

    Text is split on special tokens ("<s>", "</s>", "<unk>"), as in 4.28, and every remaining chunk is encoded by
    sentencepiece on its own, dummy prefix included. `add_special_tokens=True` prepends BOS and never appends EOS.
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, **kwargs: Any) -> None:
        kwargs.update(legacy=True, special_tokens_pattern="bos")  # legacy keeps the dummy prefix in the model proto
        super().__init__(vocab_file=vocab_file, **kwargs)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """One chunk -> sentencepiece pieces, with no prefix tricks (what 4.28's `LlamaTokenizer._tokenize` did)."""
        return self.sp_model.encode(text, out_type=str)


def load_tokenizer(path: str | Path, added_tokens: Sequence[str] = ()) -> PreTrainedTokenizer:
    """The folder's `tokenizer.model` as a `LegacyLlamaTokenizer`, with pad := eos as in the reference, and
    `added_tokens` appended to its vocabulary in order.

    The special tokens are read from the sentencepiece model itself rather than from `tokenizer_config.json`,
    because early LLaMA conversions shipped configs with empty bos/eos strings; the ids (unk 0, bos 1, eos 2 for
    LLaMA) are what the reference relied on. Added tokens split the text and swallow the whitespace on both sides,
    like the plain-string tokens the reference added to its 4.28 slow tokenizer (docs/reference/chatbind.md §4.5).
    """
    model_file = Path(path) / "tokenizer.model"
    if not model_file.is_file():
        raise FileNotFoundError(_missing_message(path, "tokenizer.model"))
    pieces = spm.SentencePieceProcessor(model_file=str(model_file))
    eos = pieces.id_to_piece(pieces.eos_id())
    tokenizer = LegacyLlamaTokenizer(
        vocab_file=str(model_file),
        unk_token=pieces.id_to_piece(pieces.unk_id()),
        bos_token=pieces.id_to_piece(pieces.bos_id()),
        eos_token=eos,
        pad_token=eos,
    )
    for token in added_tokens:  # one by one: each gets the next id even if a later one is a known piece
        tokenizer.add_tokens([AddedToken(token, lstrip=True, rstrip=True, normalized=False, special=True)])
    return tokenizer


def load_llm_tokenizer(cfg: LLMConfig) -> PreTrainedTokenizer:
    """The tokenizer of `model.llm`: its folder's, with `model.llm.added_tokens` (what datasets and chat need)."""
    return load_tokenizer(_require_path(cfg), cfg.added_tokens)


def load_causal_lm(
    path: str | Path, precision: Precision, frozen: bool, low_memory: dict[str, Any] | None = None
) -> PreTrainedModel:
    """Load the causal LM from a local folder only (never the Hub), in `precision`, optionally frozen.

    Legacy checkpoints that persist `rotary_emb.inv_freq` (transformers 4.28) load fine: transformers reports the
    keys as unexpected and recomputes the buffer. A frozen LLM is put in eval mode with no parameter requiring grad.
    `low_memory` holds `from_pretrained`'s quantization and device-map arguments (`low_memory_arguments`).
    """
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(_missing_message(path, "config.json"))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=TORCH_DTYPES[precision], local_files_only=True, **(low_memory or {})
    )
    if frozen:
        model.requires_grad_(False)
        model.eval()
    return model


def add_lora(model: PreTrainedModel, lora: LoraConfig) -> peft.PeftModel:
    """Wrap `model` with peft LoRA adapters; only the adapters are trainable afterwards."""
    adapter = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, adapter)


def build_causal_lm_on_meta(config_dict: dict[str, Any]) -> PreTrainedModel:
    """A causal LM on the meta device from a `config.json`-style dict (with `model_type`), for counting parameters
    and checking shapes of full-size models without allocating their weights."""
    options = dict(config_dict)
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def low_memory_arguments(cfg: LLMConfig) -> dict[str, Any]:
    """`from_pretrained` arguments for 8/4-bit weights (bitsandbytes) and a device map (accelerate).

    Raises:
        ValueError: asked for on a machine without CUDA, or bitsandbytes is not installed (one line, naming the key).
    """
    if cfg.quantization == "none" and cfg.device_map is None:
        return {}
    key = "model.llm.quantization" if cfg.quantization != "none" else "model.llm.device_map"
    if not torch.cuda.is_available():
        raise ValueError(
            f"{key}: low-memory loading needs a CUDA device and this machine has none; leave it unset on CPU"
        )
    arguments: dict[str, Any] = {"device_map": cfg.device_map or "auto"}
    if cfg.quantization != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"{key} = {cfg.quantization!r} needs bitsandbytes: pip install bitsandbytes")
        bits = {"load_in_8bit": True} if cfg.quantization == "8bit" else {"load_in_4bit": True}
        arguments["quantization_config"] = BitsAndBytesConfig(**bits)
    return arguments


@LLMS.register("hf_causal_lm")
def build_hf_causal_lm(cfg: LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizer]:
    """A local Hugging Face causal-LM folder (e.g. Vicuna-13B v0) -> (model, tokenizer), with the added tokens'
    rows and optional LoRA."""
    if cfg.lora.rank > 0 and not cfg.frozen:
        raise ValueError("model.llm.lora.rank > 0 needs model.llm.frozen = true: LoRA trains adapters, not the LLM")
    tokenizer = load_llm_tokenizer(cfg)
    model = load_causal_lm(cfg.path, cfg.precision, cfg.frozen, low_memory_arguments(cfg))
    add_token_rows(model, tokenizer, cfg)
    if cfg.lora.rank > 0:
        model = add_lora(model, cfg.lora)
    return model, tokenizer


def add_token_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizer, cfg: LLMConfig) -> None:
    """Grow the input and output embeddings by the added tokens' rows, initialised as the reference did (§2.5).

    A folder that already has the rows (e.g. ChatBind's merged delta) is left alone. New rows are drawn from
    N(0, initializer_range), what transformers 4.28's resize gave `<im_patch>`; then each run of consecutive
    `mean_init_tokens` becomes the mean of every row before it, in the order the reference added them
    ([PAD] the mean of the base vocabulary; <im_start> and <im_end> the mean of all rows before them).

    Raises:
        ValueError: the embedding has neither the tokenizer's base nor its full size, a `mean_init_tokens` entry
            is not an added token, or rows would have to be added to a quantized model.
    """
    rows, base, total = model.get_input_embeddings().num_embeddings, tokenizer.vocab_size, len(tokenizer)
    if rows == total:
        return
    if rows != base:
        raise ValueError(
            f"{_PATH_KEY}: the LLM has {rows} embedding rows but its tokenizer {base} (+ {total - base} added tokens)"
        )
    unknown = sorted(set(cfg.mean_init_tokens) - set(cfg.added_tokens))
    if unknown:
        raise ValueError(f"model.llm.mean_init_tokens {unknown} are not in model.llm.added_tokens")
    if cfg.quantization != "none":
        raise ValueError("model.llm.added_tokens need new embedding rows, which a quantized LLM cannot get")
    model.resize_token_embeddings(total, mean_resizing=False)
    generator = torch.Generator().manual_seed(NEW_ROWS_SEED)
    std = getattr(model.config, "initializer_range", 0.02)
    matrices = dict.fromkeys([model.get_input_embeddings().weight, model.get_output_embeddings().weight])
    with torch.no_grad():
        for matrix in matrices:  # one matrix if input and output embeddings are tied
            fresh = torch.randn(total - base, matrix.shape[1], generator=generator) * std
            matrix[base:] = fresh.to(matrix.dtype)
            for start, stop in _consecutive_runs(cfg.added_tokens, cfg.mean_init_tokens):
                matrix[base + start : base + stop] = matrix[: base + start].float().mean(0).to(matrix.dtype)
    for matrix in matrices:
        matrix.requires_grad_(not cfg.frozen)


def _consecutive_runs(tokens: Sequence[str], selected: Sequence[str]) -> list[tuple[int, int]]:
    """(start, stop) index ranges of maximal runs of `tokens` that are in `selected`."""
    runs: list[tuple[int, int]] = []
    for index, token in enumerate(tokens):
        if token not in selected:
            continue
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _require_path(cfg: LLMConfig) -> str:
    if cfg.path is None:
        raise ValueError(f"{_PATH_KEY} is not set; it should be {_path_help()}")
    return cfg.path


def _missing_message(path: str | Path, missing: str) -> str:
    return f"{_PATH_KEY} = {str(path)!r} has no {missing}; {_PATH_KEY} should be {_path_help()}"


def _path_help() -> str:
    """What belongs at `model.llm.path`, from the field's own metadata so the text lives in one place."""
    return next(f.metadata["path"] for f in dataclasses.fields(LLMConfig) if f.name == "path")
