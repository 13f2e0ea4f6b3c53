"""A tiny, deterministic Hugging Face LLaMA folder for CPU tests and smoke runs.

The folder has the layout of a real Vicuna/LLaMA checkpoint (`config.json`, safetensors weights, `tokenizer.model`,
tokenizer config files), so the tiny model goes through exactly the loader used for the 13B model. The sentencepiece
model is trained on a small fixed corpus with LLaMA's settings (BPE, identity normalisation, dummy prefix, unk/bos/eos
= 0/1/2, no pad piece); it is far too small for byte fallback (256 byte pieces), so every character the templates use
is in the corpus instead, and "\n" is a user-defined piece because sentencepiece trains line by line and never sees it.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

# Template words first (they should become whole pieces), then every character the tests and templates need.
_CORPUS = (
    "###Human: Given following image: .###Human: Use the image provided to answer the question with a short answer: "
    "what is the man holding?.###Assistant:frisbee",
    "###Human: Given following video: and its background audio: .###Human: What is happening?###Assistant:a man "
    "plays the guitar###Human: What is its color?###Assistant:red###",
    "###Human: Given following audio: .###Human: Listen to this audio and summarize its content in one sentence."
    "###Assistant:a dog barks in the background",
    "what is the color of the circle? the circle is red. what is the shape? the shape is a circle.",
    "a red circle and a blue square on a white background, given the following image and its audio.",
    "describe the video and the audio in detail; the human asks and the assistant answers.",
    "the quick brown fox jumps over the lazy dog",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "0 1 2 3 4 5 6 7 8 9 ! ? . , : ; ' \" ( ) [ ] - / * ~ # _ < > = + & % @",
)
_TRAINER_OPTIONS = {
    "model_type": "bpe",
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "byte_fallback": False,
    "character_coverage": 1.0,
    "user_defined_symbols": ["\n"],
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
    "minloglevel": 2,
}
_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": True,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 2048,
}
_SPECIAL_TOKENS_MAP = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tiny_sentencepiece(vocab_size: int) -> bytes:
    """Train the tiny BPE model on the fixed corpus; single-threaded so the bytes are identical on every run."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_writer=model, vocab_size=vocab_size, **_TRAINER_OPTIONS
    )
    return model.getvalue()


def tiny_llama_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int) -> dict:
    """The `config.json` fields of the tiny model (LLaMA's special ids, untied head, 4x FFN rounded like LLaMA)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }


def write_tiny_llama_folder(
    path: str | Path,
    vocab_size: int = 128,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random-init LLaMA + sentencepiece tokenizer folder at `path`, bit-identical for the same arguments.

    The folder is assembled in a sibling temporary directory and renamed into place, so a crash never leaves a
    half-written folder that a later run would mistake for a complete one. Raises FileExistsError if `path` exists.
    """
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy import, only when a folder is really written

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; delete it or use ensure_tiny_llama_folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (staging / "tokenizer.model").write_bytes(train_tiny_sentencepiece(vocab_size))
        _write_json(staging / "tokenizer_config.json", _TOKENIZER_CONFIG)
        _write_json(staging / "special_tokens_map.json", _SPECIAL_TOKENS_MAP)
        config = LlamaConfig(**tiny_llama_config(vocab_size, hidden_size, num_layers, num_heads))
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(staging)
        try:
            staging.rename(path)
        except OSError as error:  # a concurrent writer renamed its complete folder into place first
            raise FileExistsError(f"{path} appeared while it was being written") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def ensure_tiny_llama_folder(
    path: str | Path, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int
) -> Path:
    """Generate the tiny folder unless it exists; an existing one must match the requested sizes.

    Raises:
        ValueError: the folder exists but was generated with other sizes (a stale folder would silently change
            every shape downstream).
    """
    path = Path(path)
    if not path.exists():
        try:
            return write_tiny_llama_folder(path, vocab_size, hidden_size, num_layers, num_heads)
        except FileExistsError:  # another process won the race; validate its folder below
            pass
    found = json.loads((path / "config.json").read_text())
    wanted = tiny_llama_config(vocab_size, hidden_size, num_layers, num_heads)
    mismatched = {key: (found.get(key), value) for key, value in wanted.items() if found.get(key) != value}
    if mismatched:
        raise ValueError(f"tiny LLaMA folder {path} does not match model.llm (found, wanted): {mismatched}")
    return path


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
