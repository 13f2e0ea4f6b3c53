"""A tiny, deterministic Hugging Face LLaMA folder for CPU tests and smoke runs.

The folder has the layout of a real Vicuna/LLaMA checkpoint (`config.json`, safetensors weights, `tokenizer.model`,
tokenizer config files), so the tiny model goes through exactly the loader used for the 13B model. The sentencepiece
model is trained on a small fixed corpus with LLaMA's settings (BPE, identity normalisation, dummy prefix, unk/bos/eos
= 0/1/2, no pad piece); it is far too small for byte fallback (256 byte pieces), so every character the templates use
is in the corpus instead, and "\n" is a user-defined piece because sentencepiece trains line by line and never sees it.

Optionally the model first learns the language of a synthetic world (`corpus`, a world folder; its texts come from
`chatbridge.synthetic.world.world_texts`): the tokenizer is trained on the fixed corpus plus those texts, and the
random-init LLaMA is pre-trained on them as a causal LM for `pretrain_steps` steps. Why: ChatBridge trains only the
connector that writes soft prompt tokens into a frozen LLM. A frozen random LM predicts a near-uniform distribution
whatever its input, so the connector has nothing to steer and the loss stays at ln(vocab); the method assumes an LLM
that already knows the language. The answers of the world's texts (after "###Assistant:") weigh `ANSWER_WEIGHT`
times more in that loss than their prompts: answering after a prompt is what the frozen LM is used for, and answers
are a small share of the tokens.

Every folder records what it was generated from in `tiny_llama.json` (sizes, seed, a sha256 of the corpus texts,
pre-training steps, answer weight), and `ensure_tiny_llama_folder` regenerates a folder whose record differs from the
request.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import PreTrainedModel

from chatbridge.data.tokenize import split_targets
from chatbridge.synthetic.layout import file_lock, sibling_lock
from chatbridge.synthetic.world import MANIFEST_NAME, world_texts
from chatbridge.training.schedule import learning_rate

logger = logging.getLogger(__name__)

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


SETTINGS_NAME = "tiny_llama.json"
"""The record of what a folder was generated from."""
FORMAT_VERSION = 3
"""Bump when generation changes in a way `TinyLlamaSettings` does not capture, so old folders are regenerated.

2: the pre-training loss weighs answer tokens (`answer_weight`).
3: pre-training batches of 32 texts (`PRETRAIN_BATCH_SIZE`)."""
PRETRAIN_BATCH_SIZE = 32
"""Texts per pre-training step. With 16, the stand-in read a video's description but answered its start and its end
colour alike (asked about the test split's videos described in words: start colour 62 % right, end colour 84 %; 2000
steps of 16 did no better). With 32: 75-100 % after 1000 steps, depending on the corpus; 100 % after 1500
(`benchmarks/stand_in_reading.py` measures it)."""
PRETRAIN_MAX_TOKENS = 128
"""Longer texts are cut (the synthetic world's longest is ~85 tokens at vocabulary 512)."""
PRETRAIN_LR = 3e-3
PRETRAIN_MIN_LR = 3e-4
PRETRAIN_WARMUP_FRACTION = 0.05
PRETRAIN_GRAD_CLIP = 1.0
ANSWER_WEIGHT = 5.0
"""Loss weight of answer tokens (from after `###Assistant:` to the closing `###`) relative to all other tokens. The
stand-in must produce answers after a prompt, and answers are ~10% of the world's tokens: unweighted, 300 steps teach
the prompts' wording well and the answers' values poorly (the experiment behind issue 15 needed the weighting)."""


@dataclass(frozen=True)
class TinyLlamaSettings:
    """Everything the bytes of a tiny folder depend on; stored in the folder as `tiny_llama.json`."""

    vocab_size: int = 128
    """Requested sentencepiece vocabulary (a small corpus may support fewer pieces; then the model has fewer)."""
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    seed: int = 0
    """Seeds the weights' initialisation and the order of the pre-training batches."""
    corpus_sha256: str | None = None
    """sha256 of the world texts the tokenizer and LM learned from; None: the fixed corpus only."""
    pretrain_steps: int = 0
    answer_weight: float = ANSWER_WEIGHT
    """Pre-training loss weight of answer tokens (`ANSWER_WEIGHT`)."""
    format_version: int = FORMAT_VERSION


def train_tiny_sentencepiece(vocab_size: int, texts: Sequence[str] = ()) -> bytes:
    """Train the tiny BPE model on the fixed corpus plus `texts`; single-threaded, so its bytes never vary.

    With `texts`, `vocab_size` is a soft limit (`hard_vocab_limit=False`): a corpus allows only so many merges, and
    sentencepiece then stops early instead of failing (the caller logs the size it got). Without texts the options
    are exactly the original ones, because they are stored in the model's bytes, which golden ids depend on.
    """
    options = {**_TRAINER_OPTIONS, "hard_vocab_limit": False} if texts else _TRAINER_OPTIONS
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*_CORPUS, *texts]), model_writer=model, vocab_size=vocab_size, **options
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
    corpus: str | Path | None = None,
    pretrain_steps: int = 0,
) -> Path:
    """Write a tiny LLaMA + sentencepiece tokenizer folder at `path`, bit-identical for the same arguments.

    `corpus` (a synthetic world folder) and `pretrain_steps` teach the model the world's language first (module
    docstring). The folder is assembled in a sibling temporary directory and renamed into place, so a crash never
    leaves a half-written folder that a later run would mistake for a complete one. Raises FileExistsError if `path`
    exists.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; delete it or use ensure_tiny_llama_folder")
    texts = _corpus_texts(corpus, pretrain_steps)
    settings = _settings(vocab_size, hidden_size, num_layers, num_heads, seed, texts, pretrain_steps)
    return _publish(path, settings, texts)


def ensure_tiny_llama_folder(
    path: str | Path,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    corpus: str | Path | None = None,
    pretrain_steps: int = 0,
    seed: int = 0,
) -> Path:
    """Return the tiny folder at `path`, generating it unless one with exactly these settings is there.

    A folder generated with other settings (sizes, corpus content, pre-training steps, format) is regenerated and
    swapped in whole, so a stale folder can never silently change shapes or behaviour downstream. Processes (e.g.
    every rank of a launch) are serialised by a lock file next to the folder; the first generates, the rest reuse.

    Raises:
        ValueError: `path` exists without a `tiny_llama.json`, so it was not generated here (it may be a real
            model, or a tiny folder from before the record existed); it is never deleted automatically.
    """
    path = Path(path)
    texts = _corpus_texts(corpus, pretrain_steps)
    wanted = asdict(_settings(vocab_size, hidden_size, num_layers, num_heads, seed, texts, pretrain_steps))
    with file_lock(sibling_lock(path)):
        if not path.exists():
            logger.info("generating tiny LLaMA folder %s: %s", path, wanted)
            return _publish(path, TinyLlamaSettings(**wanted), texts)
        found = _read_settings(path)
        if found == wanted:
            return path
        changed = {key: (found.get(key), value) for key, value in wanted.items() if found.get(key) != value}
        logger.info("regenerating tiny LLaMA folder %s; changed settings (found, wanted): %s", path, changed)
        return _replace(path, TinyLlamaSettings(**wanted), texts)


def _corpus_texts(corpus: str | Path | None, pretrain_steps: int) -> list[str] | None:
    """The world texts the tiny model learns from, or None for the fixed corpus (random weights).

    Raises:
        ValueError: `pretrain_steps` is negative, or positive without a corpus.
        FileNotFoundError: `corpus` is not a (complete) synthetic world.
    """
    if pretrain_steps < 0:
        raise ValueError(f"synthetic.tiny_llm.pretrain_steps must be >= 0, got {pretrain_steps}")
    if corpus is None:
        if pretrain_steps:
            raise ValueError("synthetic.tiny_llm.pretrain_steps > 0 needs a corpus (synthetic.world)")
        return None
    if not (Path(corpus) / MANIFEST_NAME).is_file():
        raise FileNotFoundError(
            f"synthetic.world = {str(corpus)!r} has no {MANIFEST_NAME}; it should be a synthetic world folder "
            "(chatbridge.synthetic.world.ensure_world, e.g. through the config's synthetic.world)"
        )
    return world_texts(Path(corpus))


@dataclass(frozen=True)
class LMSequence:
    """One pre-training text as token ids, with the loss weight of predicting each of them."""

    ids: list[int]
    weights: list[float]
    """The answer weight for answer tokens, 1 for the rest (the BOS is never predicted: its weight is unused)."""


def _lm_sequence(pieces: spm.SentencePieceProcessor, text: str, answer_weight: float) -> LMSequence:
    """BOS + `text` + EOS for pre-training, cut to `PRETRAIN_MAX_TOKENS`, answer tokens weighing `answer_weight`.

    The text is cut into `collate.split_targets` segments and each is encoded on its own, as the collator does,
    so that e.g. an answer after "###Assistant:" carries its own dummy prefix ("▁red") exactly as in training; the
    segments training supervises (answer and closing "###") are the ones weighted.
    """
    ids, weights = [pieces.bos_id()], [1.0]
    for segment, supervised in split_targets(text):
        encoded = pieces.encode(segment)
        ids += encoded
        weights += [answer_weight if supervised else 1.0] * len(encoded)
    ids.append(pieces.eos_id())
    weights.append(1.0)
    return LMSequence(ids[:PRETRAIN_MAX_TOKENS], weights[:PRETRAIN_MAX_TOKENS])


def pretrain_causal_lm(model: PreTrainedModel, sequences: Sequence[LMSequence], steps: int, seed: int) -> None:
    """Train every weight of `model` as a causal LM on `sequences` for `steps` AdamW steps, each predicted token's
    cross-entropy weighted by its `LMSequence.weights`; logs the (unweighted) loss per token.

    Runs on one thread: the order of floating-point reductions, and so the saved bytes, must not depend on the
    machine's core count (two threads gave other weights than one), and the tiny matrices gain nothing from more
    threads. The caller's thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the bytes must not depend on the core count (see the docstring); restored below
    try:
        initial = _corpus_loss(model, sequences)
        _train(model, sequences, steps, torch.Generator().manual_seed(seed))
        final = _corpus_loss(model, sequences)
    finally:
        torch.set_num_threads(threads)
    logger.info(
        "tiny LLaMA pre-trained for %d steps on %d texts: LM loss %.3f -> %.3f nats/token (uniform: ln(%d) = %.3f)",
        steps,
        len(sequences),
        initial,
        final,
        model.config.vocab_size,
        math.log(model.config.vocab_size),
    )


def _train(model: PreTrainedModel, sequences: Sequence[LMSequence], steps: int, generator: torch.Generator) -> None:
    """The pre-training loop: shuffled batches (an epoch at a time), linear warmup + cosine decay, fp32, a loss
    weighted per token (`_weighted_loss`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, round(PRETRAIN_WARMUP_FRACTION * steps))
    batches = _shuffled_batches(len(sequences), generator)
    model.train()
    for step in tqdm(range(steps), desc="pretraining the tiny LLM", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, PRETRAIN_LR, PRETRAIN_MIN_LR, PRETRAIN_MIN_LR, warmup, steps)
        input_ids, attention_mask, weights = _pad([sequences[index] for index in next(batches)])
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = _weighted_loss(logits, input_ids, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), PRETRAIN_GRAD_CLIP)
        optimizer.step()
    model.eval()


def _shuffled_batches(count: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches of sequence indices: each epoch a fresh permutation, cut into `PRETRAIN_BATCH_SIZE` chunks."""
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count, PRETRAIN_BATCH_SIZE):
            yield order[start : start + PRETRAIN_BATCH_SIZE]


def _pad(sequences: Sequence[LMSequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, weights)`, each (B, T); padding is masked and weighs 0."""
    length = max(len(sequence.ids) for sequence in sequences)
    input_ids = torch.zeros(len(sequences), length, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    weights = torch.zeros(len(sequences), length)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence.ids)] = torch.tensor(sequence.ids)
        attention_mask[row, : len(sequence.ids)] = 1
        weights[row, : len(sequence.ids)] = torch.tensor(sequence.weights)
    return input_ids, attention_mask, weights


def _token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (B, T-1) of predicting token t+1 from logits (B, T, V) at t."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")


def _weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the next-token losses; padding (weight 0) drops out."""
    target_weights = weights[:, 1:]  # (B, T-1): the weight of the predicted token
    return (_token_losses(logits, input_ids) * target_weights).sum() / target_weights.sum()


def _corpus_loss(model: PreTrainedModel, sequences: Sequence[LMSequence]) -> float:
    """Unweighted next-token cross-entropy per predicted token over all of `sequences`, in eval mode (nats)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), PRETRAIN_BATCH_SIZE):
            input_ids, attention_mask, weights = _pad(sequences[start : start + PRETRAIN_BATCH_SIZE])
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
            predicted = weights[:, 1:] > 0  # (B, T-1): real tokens, not padding
            total += _token_losses(logits, input_ids)[predicted].sum().item()
            count += int(predicted.sum())
    return total / count


def _settings(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    seed: int,
    texts: Sequence[str] | None,
    pretrain_steps: int,
) -> TinyLlamaSettings:
    corpus_sha256 = None
    if texts is not None:
        corpus_sha256 = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()
    return TinyLlamaSettings(
        vocab_size, hidden_size, num_layers, num_heads, seed, corpus_sha256, pretrain_steps, ANSWER_WEIGHT
    )


def _write_contents(folder: Path, settings: TinyLlamaSettings, texts: Sequence[str] | None) -> None:
    """Tokenizer files, config, weights (pre-trained if asked) and the settings record, into `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy import, only when a folder is really written

    tokenizer_model = train_tiny_sentencepiece(settings.vocab_size, texts or ())
    pieces = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    vocab_size = pieces.get_piece_size()
    if vocab_size < settings.vocab_size:
        logger.warning(
            "synthetic.tiny_llm.vocab_size = %d is more than the corpus supports; the tiny LLaMA gets %d pieces",
            settings.vocab_size,
            vocab_size,
        )
    (folder / "tokenizer.model").write_bytes(tokenizer_model)
    _write_json(folder / "tokenizer_config.json", _TOKENIZER_CONFIG)
    _write_json(folder / "special_tokens_map.json", _SPECIAL_TOKENS_MAP)
    config = LlamaConfig(**tiny_llama_config(vocab_size, settings.hidden_size, settings.num_layers, settings.num_heads))
    with torch.random.fork_rng(devices=[]):  # seeding must not reset the caller's random stream
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(config)
    if settings.pretrain_steps:
        sequences = [_lm_sequence(pieces, text, settings.answer_weight) for text in texts or ()]
        pretrain_causal_lm(model, sequences, settings.pretrain_steps, settings.seed)
    # Written by hand, not with `save_pretrained`, which writes nothing on ranks other than 0 once a process group
    # exists (and any rank of a launch may be the one that generates the folder).
    config.save_pretrained(folder)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors", {"format": "pt"}
    )
    _write_json(folder / SETTINGS_NAME, asdict(settings))


def _stage(path: Path, settings: TinyLlamaSettings, texts: Sequence[str] | None) -> Path:
    """A complete new folder in a temporary sibling of `path`; nothing is left behind if writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write_contents(staging, settings, texts)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _publish(path: Path, settings: TinyLlamaSettings, texts: Sequence[str] | None) -> Path:
    """Stage a folder and rename it to `path`, which must not exist."""
    staging = _stage(path, settings, texts)
    try:
        staging.rename(path)
    except OSError as error:  # a concurrent writer renamed its complete folder into place first
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"{path} appeared while it was being written") from error
    return path


def _replace(path: Path, settings: TinyLlamaSettings, texts: Sequence[str] | None) -> Path:
    """Stage a folder, then swap it for the stale one at `path` by two renames and delete the stale one.

    The slow part (training) happens before the swap; a crash between the renames leaves no folder at `path`,
    which the next call simply generates.
    """
    staging = _stage(path, settings, texts)
    retired = staging.with_name(f"{staging.name}.old")
    path.rename(retired)
    staging.rename(path)
    shutil.rmtree(retired)
    return path


def _read_settings(path: Path) -> dict:
    record = path / SETTINGS_NAME
    if not record.is_file():
        raise ValueError(
            f"{path} exists but has no {SETTINGS_NAME}, so it was not generated by tiny_llama (or by an older "
            "version); it is never deleted automatically: delete it, or set model.llm.path to another folder"
        )
    return json.loads(record.read_text())


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
