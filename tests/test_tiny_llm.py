"""The tiny LLaMA folder (`chatbridge.synthetic.tiny_llm`): determinism, atomic writes, reuse, world language."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from chatbridge.config import LLMConfig
from chatbridge.data.templates import render_caption
from chatbridge.models import llm
from chatbridge.registry import LLMS
from chatbridge.synthetic import tiny_llm
from chatbridge.synthetic.formats import media_descriptions
from chatbridge.synthetic.tiny_llm import ensure_tiny_llama_folder, write_tiny_llama_folder
from chatbridge.synthetic.world import SCALES, ensure_world, world_texts

LOGGER = "chatbridge.synthetic.tiny_llm"
# Small but real: hidden 32 keeps pre-training fast; vocabulary 256 is well within what the tiny world supports.
CORPUS_SIZES = {"vocab_size": 256, "hidden_size": 32, "num_layers": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny synthetic world (seed 0): the corpus of the language-learning tests."""
    root = tmp_path_factory.mktemp("world")
    ensure_world(root, 0, SCALES["tiny"])
    return root


def _stamps(path: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file: changes if and only if the folder was written again."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def test_tiny_folder_is_bit_identical_across_generations(tmp_path) -> None:
    first = write_tiny_llama_folder(tmp_path / "a")
    second = write_tiny_llama_folder(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_tiny_folder_write_is_atomic(tmp_path, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_llm, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_tiny_llama_folder(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_existing_tiny_folder_is_reused_when_it_matches(tiny_llm_dir) -> None:
    with pytest.raises(FileExistsError):
        write_tiny_llama_folder(tiny_llm_dir)
    before = _stamps(tiny_llm_dir)
    assert ensure_tiny_llama_folder(tiny_llm_dir, 128, 32, 2, 4) == tiny_llm_dir
    assert _stamps(tiny_llm_dir) == before


def test_ensured_folder_loads_frozen_through_hf_causal_lm(tiny_llm_dir, tmp_path) -> None:
    """What replaced the `tiny_llama` LLM builder: generate the folder, then load it like any Hugging Face folder."""
    path = ensure_tiny_llama_folder(tmp_path / "tiny", 128, 32, 2, 4)
    assert (tmp_path / "tiny" / "config.json").is_file()
    model, _ = LLMS.get("hf_causal_lm")(LLMConfig(path=str(path), precision="fp32"))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    embeds = model.get_input_embeddings()(torch.tensor([[1, 40, 51]]))
    assert model(inputs_embeds=embeds).logits.shape == (1, 3, 128)
    again, _ = LLMS.get("hf_causal_lm")(LLMConfig(path=str(tiny_llm_dir), precision="fp32"))  # same settings
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


# ----------------------------------------------------------------------------------------------- world language


def _per_token_lm_loss(folder: Path, texts: list[str]) -> float:
    """The folder's LM loss on `texts` (BOS + text + EOS each), per predicted token, through the public loaders."""
    model, tokenizer = llm.load_causal_lm(folder, "fp32", frozen=True), llm.load_tokenizer(folder)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
            input_ids = torch.tensor([ids])
            total += model(input_ids=input_ids, labels=input_ids).loss.item() * (len(ids) - 1)
            count += len(ids) - 1
    return total / count


def test_world_texts_describe_each_medium_where_its_soft_tokens_go(world, tmp_path) -> None:
    texts = world_texts(world)
    assert texts == world_texts(world)  # deterministic
    assert not any("<query>" in text for text in texts)
    attributes = json.loads((world / "annotations" / "attributes.json").read_text())
    descriptions = media_descriptions(attributes)
    # Stage 1: "<description>. <caption>" for every caption of a training medium.
    row = json.loads((world / "annotations" / "stage1" / "audio.json").read_text())[0]
    caption = row.get("caption", row.get("desc"))
    assert f"{descriptions['audio'][row['video_id']]}. {render_caption(caption)}" in texts
    # Stage 2 and the joint questions: the medium's slot holds its description.
    qa = json.loads((world / "annotations" / "stage2" / "image_qa.json").read_text())[0]
    prefix = f"###Human: Given following image: {descriptions['image'][qa['image_id']]}.###Human: "
    assert any(text.startswith(prefix) and text.endswith("###") for text in texts)
    # The held-out split is never read: removing it changes nothing.
    copy = tmp_path / "world"
    shutil.copytree(world, copy, ignore=shutil.ignore_patterns("images", "frames", "audios", "eval"))
    assert world_texts(copy) == texts


def test_answer_tokens_weigh_more_in_pretraining(tiny_llm_dir) -> None:
    pieces = spm.SentencePieceProcessor(model_file=str(tiny_llm_dir / "tokenizer.model"))
    text = "###Human: what colour is the shape?###Assistant:red\n###"
    sequence = tiny_llm._lm_sequence(pieces, text, answer_weight=5.0)
    answer = len(pieces.encode("red\n###"))
    assert len(sequence.ids) == len(sequence.weights) == 1 + len(pieces.encode(text[: -len("red\n###")])) + answer + 1
    assert sequence.weights[-1 - answer : -1] == [5.0] * answer
    assert set(sequence.weights[: -1 - answer]) == {1.0} and sequence.weights[-1] == 1.0  # prompt, BOS and EOS


def test_changed_answer_weight_regenerates_the_folder(world, tmp_path, monkeypatch) -> None:
    path = ensure_tiny_llama_folder(tmp_path / "tiny", **CORPUS_SIZES, corpus=world, pretrain_steps=2)
    assert json.loads((path / tiny_llm.SETTINGS_NAME).read_text())["answer_weight"] == tiny_llm.ANSWER_WEIGHT == 5.0
    weighted = (path / "model.safetensors").read_bytes()
    monkeypatch.setattr(tiny_llm, "ANSWER_WEIGHT", 1.0)
    ensure_tiny_llama_folder(path, **CORPUS_SIZES, corpus=world, pretrain_steps=2)
    assert json.loads((path / tiny_llm.SETTINGS_NAME).read_text())["answer_weight"] == 1.0
    assert (path / "model.safetensors").read_bytes() != weighted  # the same steps, weighted otherwise


def test_pretraining_on_the_world_lowers_its_lm_loss(world, tmp_path, caplog) -> None:
    random_init = write_tiny_llama_folder(tmp_path / "random", **CORPUS_SIZES, corpus=world)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trained = write_tiny_llama_folder(tmp_path / "trained", **CORPUS_SIZES, corpus=world, pretrain_steps=30)
    assert "LM loss" in caplog.text and "30 steps" in caplog.text
    # Same tokenizer and the same initial weights: only the 30 steps differ.
    assert (random_init / "tokenizer.model").read_bytes() == (trained / "tokenizer.model").read_bytes()
    assert len(llm.load_tokenizer(trained)) == 256
    texts = world_texts(world)
    before, after = _per_token_lm_loss(random_init, texts), _per_token_lm_loss(trained, texts)
    assert before > 5.0  # ~ln(256) = 5.55: a random LM is near uniform
    assert after < before - 1.0, (before, after)  # 5.56 -> 4.32 nats/token


def test_pretrained_folder_is_bit_identical_in_a_fresh_process(world, tmp_path) -> None:
    """A fresh process (one thread count, untouched RNG) and this one (other tests ran before) write the same bytes."""
    script = (
        "import sys; from chatbridge.synthetic.tiny_llm import write_tiny_llama_folder; "
        f"write_tiny_llama_folder(sys.argv[1], **{CORPUS_SIZES!r}, corpus={str(world)!r}, pretrain_steps=10)"
    )
    fresh = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "fresh")])  # runs while this one works
    torch.rand(7)  # move the global random stream
    here = write_tiny_llama_folder(tmp_path / "here", **CORPUS_SIZES, corpus=world, pretrain_steps=10)
    assert fresh.wait(timeout=300) == 0
    names = sorted(p.name for p in here.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "fresh").iterdir()) and "model.safetensors" in names
    for name in names:
        assert (here / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_changed_settings_or_corpus_regenerate_the_folder(world, tmp_path) -> None:
    path = tmp_path / "llm" / "tiny"

    def ensure(corpus: Path = world, pretrain_steps: int = 0, hidden_size: int = 32) -> dict:
        sizes = {**CORPUS_SIZES, "hidden_size": hidden_size}
        ensure_tiny_llama_folder(path, **sizes, corpus=corpus, pretrain_steps=pretrain_steps)
        return json.loads((path / tiny_llm.SETTINGS_NAME).read_text())

    first = ensure()
    stamps = _stamps(path)
    assert ensure() == first and _stamps(path) == stamps  # same settings: reused, not rewritten
    assert ensure(pretrain_steps=2)["pretrain_steps"] == 2
    assert _stamps(path) != stamps
    other_world = tmp_path / "other_world"
    ensure_world(other_world, 1, SCALES["tiny"])
    assert ensure(corpus=other_world, pretrain_steps=2)["corpus_sha256"] != first["corpus_sha256"]
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 32
    assert ensure(corpus=other_world, pretrain_steps=2, hidden_size=64)["hidden_size"] == 64
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 64
    assert sorted(p.name for p in path.parent.iterdir()) == [".tiny.lock", "tiny"]  # no staging leftovers
    assert ensure(corpus=None)["corpus_sha256"] is None  # back to the fixed corpus
    assert (path / "tokenizer.model").read_bytes() == tiny_llm.train_tiny_sentencepiece(256)


def test_folders_not_generated_here_are_never_replaced(tmp_path) -> None:
    path = tmp_path / "vicuna"
    path.mkdir()
    (path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="tiny_llama.json"):
        ensure_tiny_llama_folder(path, 128, 32, 2, 4)
    assert [p.name for p in path.iterdir()] == ["config.json"]


def test_corpus_settings_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"pretrain_steps > 0 needs a corpus \(synthetic\.world\)"):
        ensure_tiny_llama_folder(tmp_path / "tiny", 128, 32, 2, 4, pretrain_steps=5)
    with pytest.raises(ValueError, match=r"pretrain_steps must be >= 0"):
        ensure_tiny_llama_folder(tmp_path / "tiny", 128, 32, 2, 4, pretrain_steps=-1)
    with pytest.raises(FileNotFoundError, match=r"synthetic\.world = .* has no MANIFEST\.json"):
        ensure_tiny_llama_folder(tmp_path / "tiny", 128, 32, 2, 4, corpus=tmp_path)
    assert not (tmp_path / "tiny").exists()


def test_too_large_a_vocabulary_shrinks_to_what_the_corpus_supports(world, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        path = write_tiny_llama_folder(tmp_path / "tiny", 100_000, 32, 2, 4, corpus=world)
    size = json.loads((path / "config.json").read_text())["vocab_size"]
    assert 256 < size < 100_000 and len(llm.load_tokenizer(path)) == size
    assert "synthetic.tiny_llm.vocab_size = 100000 is more than the corpus supports" in caplog.text


def test_generation_leaves_the_global_random_stream_alone(tmp_path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_tiny_llama_folder(tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_ensured_folder_learns_the_world_language(world, tmp_path) -> None:
    """What `synthetic.tiny_llm` with `pretrain_steps` asks `chatbridge.synthetic.prepare` for, loaded frozen."""
    path = ensure_tiny_llama_folder(tmp_path / "tiny", 128, 32, 2, 4, corpus=world, pretrain_steps=3)
    model, tokenizer = LLMS.get("hf_causal_lm")(LLMConfig(path=str(path), precision="fp32"))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.config.vocab_size == len(tokenizer) == 128
    settings = json.loads((tmp_path / "tiny" / tiny_llm.SETTINGS_NAME).read_text())
    assert settings["pretrain_steps"] == 3 and settings["corpus_sha256"]
