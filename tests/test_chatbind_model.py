"""The ChatBind model through ChatBridge's model class: added-token rows, slots, the two stages' trainable sets,
the released artefacts, and the full-size build (docs/reference/chatbind.md §2.4-2.7, §10)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from chatbridge.config_loading import load_config
from chatbridge.data.collate import collate
from chatbridge.data.sample import Medium, MultimodalSample
from chatbridge.models.chatbridge import ChatBridgeModel, assemble_chatbridge
from chatbridge.models.freezing import count_parameters, set_trainable
from chatbridge.models.llm import build_causal_lm_on_meta, build_hf_causal_lm, load_llm_tokenizer
from chatbridge.models.loading_chatbind import convert_delta, convert_projector, merge_delta, read_projector_file
from chatbridge.models.setup import build_model_for_training
from chatbridge.registry import CHAT_TEMPLATES
from tests.fixtures.chatbind_release import write_delta, write_projector_file

STAGE1 = "train_configs/chatbind_tiny_pretrain.yaml"
VICUNA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


@pytest.fixture
def config(tiny_llm_dir):
    """The tiny ChatBind stage-1 config on the session's tiny LLaMA, with a random (unloaded) tiny ImageBind."""
    options = [f"model.llm.path={tiny_llm_dir}", "model.encoders.imagebind.checkpoint=null"]
    return load_config(STAGE1, options, require_paths=False)


def _prompt_batch(model_cfg, tokenizer, modalities=("image", "audio")):
    """A chat prompt with one image and one audio clip (random preprocessed tensors), collated as for training."""
    chat = CHAT_TEMPLATES.get(model_cfg.chat_template)()
    shapes = {"image": (3, 32, 32), "video": (15, 3, 2, 32, 32), "audio": (3, 1, 32, 204)}
    encoded = chat.encode(chat.render_turn(list(modalities), "What is shown?", True), tokenizer, [1] * len(modalities))
    encoded = dataclasses.replace(encoded, labels=encoded.input_ids)  # supervise everything: gradients everywhere
    generator = torch.Generator().manual_seed(0)
    media = [Medium(m, torch.randn(shapes[m], generator=generator)) for m in modalities]
    return collate([MultimodalSample(encoded, media, "test", 0)], tokenizer.pad_token_id, tokenizer.bos_token_id)


def test_added_tokens_grow_the_llm_with_the_references_rows(config):
    llm, tokenizer = build_hf_causal_lm(config.model.llm)
    base = tokenizer.vocab_size
    rows = llm.get_input_embeddings().weight
    assert rows.shape[0] == base + 4 and llm.get_output_embeddings().weight.shape[0] == base + 4
    for matrix in (rows, llm.get_output_embeddings().weight):
        torch.testing.assert_close(matrix[base], matrix[:base].mean(0))  # [PAD]: mean of the vocabulary
        torch.testing.assert_close(matrix[base + 2], matrix[: base + 2].mean(0))  # <im_start>: of all rows before
        torch.testing.assert_close(matrix[base + 3], matrix[: base + 2].mean(0))  # <im_end>: the same mean
    assert 0.005 < rows[base + 1].std() < 0.05  # <im_patch>: N(0, 0.02), as transformers 4.28's resize
    assert not rows.requires_grad  # the frozen LLM's matrix stays frozen


def test_one_token_per_medium_replaces_its_im_patch(config):
    model = build_model_for_training(config.model).eval()
    tokenizer = load_llm_tokenizer(config.model.llm)
    batch = _prompt_batch(config.model, tokenizer)
    with torch.no_grad():
        soft = model.batch_soft_tokens(batch)
        embeds = model.embed(batch.input_ids, soft, batch.soft_token_positions)[0]
    patch, start = tokenizer.convert_tokens_to_ids(["<im_patch>", "<im_start>"])
    positions = (batch.input_ids[0] == patch).nonzero().flatten()
    assert len(positions) == 2 and {m: s.shape for m, s in soft.items()} == {"image": (1, 1, 32), "audio": (1, 1, 32)}
    torch.testing.assert_close(embeds[positions], torch.cat([soft["image"][0], soft["audio"][0]]))
    starts = (batch.input_ids[0] == start).nonzero().flatten()
    torch.testing.assert_close(embeds[starts], model.token_rows.weight[0].expand(2, -1))


def test_stage_1_trains_exactly_the_special_token_rows_and_the_projector(config):
    model = build_model_for_training(config.model)
    tokenizer = load_llm_tokenizer(config.model.llm)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"llm_proj.weight", "llm_proj.bias", "token_rows.weight"}
    assert model.token_rows.token_ids.tolist() == tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
    model(_prompt_batch(config.model, tokenizer)).loss.backward()
    assert model.token_rows.weight.grad.abs().sum(-1).gt(0).all()  # both rows receive gradients
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)


def test_a_stage_2_step_updates_the_llm(config):
    stage2 = dataclasses.replace(config.model, trainable=["llm_proj.*", "token_rows.*", "llm.*"])
    stage2.llm = dataclasses.replace(stage2.llm, frozen=False)
    model = build_model_for_training(stage2)
    before = {name: p.detach().clone() for name, p in model.llm.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(_prompt_batch(stage2, load_llm_tokenizer(stage2.llm))).loss.backward()
    optimizer.step()
    changed = [name for name, p in model.llm.named_parameters() if not torch.equal(p, before[name])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "lm_head.weight" in changed
    assert len(changed) == len(before)


def test_several_media_are_each_spliced_and_the_faithful_quirk_keeps_only_the_last(config):
    model = build_model_for_training(config.model).eval()
    tokenizer = load_llm_tokenizer(config.model.llm)
    batch = _prompt_batch(config.model, tokenizer)
    faithful = ChatBridgeModel(
        model.encoders,
        config.model.routes,
        "imagebind",
        model.connector,
        model.llm,
        model.frozen,
        model.token_rows,
        splice_last_medium_only=True,
    )
    faithful.llm_proj = model.llm_proj
    with torch.no_grad():
        soft = model.batch_soft_tokens(batch)
        fixed = model.embed(batch.input_ids, soft, batch.soft_token_positions)[0]
        quirk = faithful.embed(batch.input_ids, soft, batch.soft_token_positions)[0]
    image, audio = batch.soft_token_positions["image"][0, 0], batch.soft_token_positions["audio"][0, 0]
    torch.testing.assert_close(quirk[audio], fixed[audio])  # the last medium is spliced in both
    patch_row = model.llm.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<im_patch>")]
    torch.testing.assert_close(quirk[image], patch_row)  # the earlier slot keeps the <im_patch> embedding (§2.6)
    assert not torch.allclose(fixed[image], patch_row)


def test_the_released_projector_file_loads(config, tmp_path):
    vocab = load_llm_tokenizer(config.model.llm).__len__()
    written = write_projector_file(tmp_path / "chatbind-7b-pretrain.bin", llm_width=32, embed_dim=64, vocab=vocab)
    tensors = read_projector_file(tmp_path / "chatbind-7b-pretrain.bin", config.model.llm)
    assert tensors.keys() == {"llm_proj.weight", "llm_proj.bias", "token_rows.weight"}
    folder = convert_projector(tmp_path / "chatbind-7b-pretrain.bin", tmp_path / "stage1", config)
    model = build_model_for_training(dataclasses.replace(config.model, checkpoint=str(folder)))
    torch.testing.assert_close(model.llm_proj.weight, written["model.mm_projector.weight"])
    torch.testing.assert_close(model.llm_proj.bias, written["model.mm_projector.bias"])
    torch.testing.assert_close(model.token_rows.weight, written["model.embed_tokens.weight"][-2:])  # §6.3
    torch.save({"model.mm_projector.weight": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match=r"missing \['model.mm_projector.bias'\]"):
        read_projector_file(tmp_path / "other.bin", config.model.llm)


def test_the_released_delta_applied_to_llama_gives_the_target(config, tiny_llm_dir, tmp_path):
    target = write_delta(tiny_llm_dir, tmp_path / "delta", added_tokens=4, embed_dim=64)
    tensors = merge_delta(tiny_llm_dir, tmp_path / "delta", tmp_path / "llm", config.model.llm)
    llm, tokenizer = build_hf_causal_lm(dataclasses.replace(config.model.llm, path=str(tmp_path / "llm")))
    assert len(tokenizer) == llm.get_input_embeddings().weight.shape[0]  # rows already there: no resize
    state = llm.state_dict()
    for key, value in target.items():
        if key.startswith("model.mm_projector"):
            continue
        torch.testing.assert_close(state[key], value.float(), atol=2e-3, rtol=0)  # fp16 arithmetic, as apply_delta
    torch.testing.assert_close(tensors["llm_proj.weight"], target["model.mm_projector.weight"].float())
    torch.testing.assert_close(tensors["token_rows.weight"], target["model.embed_tokens.weight"][-2:].float())
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["model_type"] == "llama"
    llm_folder, checkpoint = convert_delta(tiny_llm_dir, tmp_path / "delta", tmp_path / "converted", config)
    model = build_model_for_training(dataclasses.replace(config.model, checkpoint=str(checkpoint), trainable=[]))
    assert model.llm.config.vocab_size == len(tokenizer) and llm_folder == tmp_path / "converted" / "llm"
    torch.testing.assert_close(model.llm_proj.bias, target["model.mm_projector.bias"].float())
    with pytest.raises(ValueError, match="other LLaVA version"):
        v1 = dataclasses.replace(config.model.llm, added_tokens=["<im_patch>", "<im_start>", "<im_end>"])
        merge_delta(tiny_llm_dir, tmp_path / "delta", tmp_path / "llm_v1", v1)


def test_the_full_size_build_on_the_meta_device_has_the_references_parameter_counts():
    config = load_config("train_configs/chatbind_pretrain.yaml", require_paths=False)
    with torch.device("meta"):
        model = assemble_chatbridge(config.model, build_causal_lm_on_meta(VICUNA_7B | {"vocab_size": 32004}))
    set_trainable(model, config.model.trainable)
    trainable, frozen = count_parameters(model)
    assert sum(p.numel() for p in model.llm_proj.parameters()) == 4_198_400  # mm_projector, 1024 -> 4096 (§2.4)
    assert sum(p.numel() for p in model.llm.parameters()) == 6_738_448_384  # LLaMA-7B with 32004 rows
    assert sum(p.numel() for p in model.encoders.parameters()) == 632_829_440 + 86_235_648  # vision + audio trunks
    assert trainable == 4_198_400 + 2 * 4096  # projector + the <im_start>/<im_end> rows
    assert frozen == 6_738_448_384 + 632_829_440 + 86_235_648
