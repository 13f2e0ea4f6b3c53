"""LLM and tokenizer loading: legacy segment encoding, the tiny folder, error messages, LoRA, the 13B shape count."""

from __future__ import annotations

import time

import pytest
import sentencepiece as spm
import torch
from transformers import LlamaForCausalLM

from chatbridge.config import LLMConfig, LoraConfig
from chatbridge.models import llm, tiny_llm
from chatbridge.registry import LLMS
from tests.fixtures.llama import tiny_llama_folder, write_tiny_llama_folder

SEGMENTS = [
    "###Human: Given following image: ",
    " and its background audio: ",  # leading space: "▁▁and"; transformers 5's LlamaTokenizer drops one "▁"
    ".###Human: What is the color?###Assistant:",
    "red\n###",
    "Human: what shape?###Assistant:",
    "  two  spaces ",
    "\n",
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("llm"))


@pytest.mark.parametrize("segment", SEGMENTS)
def test_each_segment_is_encoded_by_sentencepiece_with_its_dummy_prefix(tiny, segment: str) -> None:
    path, tokenizer = tiny
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    assert tokenizer.encode(segment, add_special_tokens=False) == sp.encode(segment)
    assert tokenizer(segment, add_special_tokens=False)["input_ids"] == sp.encode(segment)


def test_special_ids_follow_llama(tiny) -> None:
    _, tokenizer = tiny
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert len(tokenizer) == 128
    assert tokenizer.encode("red") == [1] + tokenizer.encode("red", add_special_tokens=False)  # BOS, never EOS
    assert tokenizer.decode(tokenizer.encode("red\n###", add_special_tokens=False)) == "red\n###"


def test_tiny_folder_is_bit_identical_across_generations(tmp_path) -> None:
    first = write_tiny_llama_folder(tmp_path / "a")
    start = time.perf_counter()
    second = write_tiny_llama_folder(tmp_path / "b")
    assert time.perf_counter() - start < 5.0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_tiny_folder_write_is_atomic(tmp_path, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_tiny_llama_folder(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_existing_tiny_folder_must_match_the_config(tiny) -> None:
    path, _ = tiny
    with pytest.raises(FileExistsError):
        write_tiny_llama_folder(path)
    assert tiny_llm.ensure_tiny_llama_folder(path, 128, 32, 2, 4) == path
    with pytest.raises(ValueError, match="hidden_size"):
        tiny_llm.ensure_tiny_llama_folder(path, 128, 64, 2, 4)


def test_missing_folder_errors_name_the_config_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.llm\.path .* has no config\.json.*Hugging Face causal-LM"):
        llm.load_causal_lm(tmp_path / "vicuna-13b", "fp32", frozen=True)
    with pytest.raises(FileNotFoundError, match=r"model\.llm\.path .* has no tokenizer\.model"):
        llm.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=r"model\.llm\.path is not set"):
        LLMS.get("tiny_llama")(LLMConfig(name="tiny_llama", path=None))


def test_tiny_llama_builder_generates_then_loads_frozen(tmp_path) -> None:
    cfg = LLMConfig(name="tiny_llama", path=str(tmp_path / "tiny"), precision="fp32")
    model, tokenizer = LLMS.get("tiny_llama")(cfg)
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    embeds = model.get_input_embeddings()(torch.tensor([[1, 40, 51]]))
    assert model(inputs_embeds=embeds).logits.shape == (1, 3, 128)
    again, _ = LLMS.get("hf_causal_lm")(cfg)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_precision_sets_the_weight_dtype(tiny) -> None:
    path, _ = tiny
    assert next(llm.load_causal_lm(path, "bf16", frozen=True).parameters()).dtype == torch.bfloat16


def test_lora_trains_only_adapters(tiny) -> None:
    path, _ = tiny
    cfg = LLMConfig(path=str(path), precision="fp32", lora=LoraConfig(rank=4))
    model, _ = llm.build_hf_causal_lm(cfg)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # q_proj and v_proj in 2 layers, each A (4 x 32) + B (32 x 4)
    assert sum(trainable.values()) == 2 * 2 * (4 * 32 + 32 * 4)
    with pytest.raises(ValueError, match="frozen"):
        llm.build_hf_causal_lm(LLMConfig(path=str(path), frozen=False, lora=LoraConfig(rank=4)))


def test_llama_13b_on_meta_has_the_expected_parameter_count() -> None:
    config = {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    }
    model = llm.build_causal_lm_on_meta(config)
    # Spec 3.5 shapes: embed_tokens and lm_head 32000 x 5120 = 163,840,000 each;
    # per layer q/k/v/o 4 x 5120^2 = 104,857,600 + gate/up/down 3 x 13824 x 5120 = 212,336,640
    #   + 2 RMSNorms 2 x 5120 = 10,240  ->  317,204,480; x 40 layers = 12,688,179,200;
    # final norm 5,120. Total 2 x 163,840,000 + 12,688,179,200 + 5,120 = 13,015,864,320 (inv_freq is a buffer).
    assert sum(p.numel() for p in model.parameters()) == 13_015_864_320
    assert next(model.parameters()).device.type == "meta"
