"""The assembled model: shapes per modality and combination, gradients, batched == per-sample, checkpoints."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from chatbridge.config import ModelConfig
from chatbridge.config_loading import load_config
from chatbridge.data.batch import IGNORE_INDEX, ChatBridgeBatch
from chatbridge.models.chatbridge import ChatBridgeModel, assemble_chatbridge, build_chatbridge
from chatbridge.models.freezing import count_parameters, set_trainable
from chatbridge.models.llm import build_causal_lm_on_meta
from chatbridge.models.loading import (
    convert_released_checkpoint,
    load_chatbridge_checkpoint,
    released_to_chatbridge,
    save_chatbridge_checkpoint,
)
from tests.conftest import REPO
from tests.fixtures.released import released_state_dict, write_released_checkpoint

TINY_MEDIA = {  # shapes for the tiny preset: 32 px images, 32 mel bins, 64-frame audio segments
    "image": (3, 32, 32),
    "video": (4, 3, 32, 32),
    "audio": (2, 64, 32),
}
LLAMA_13B = {
    "model_type": "llama",
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "vocab_size": 32000,
}


def random_media(modality: str, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(TINY_MEDIA[modality], generator=generator)


def make_batch(model: ChatBridgeModel, samples: list[list], padding_side: str = "right") -> ChatBridgeBatch:
    """Collate hand-written samples: each is a list of (token ids, supervised) pairs and media tensors by name.

    Independent of the data pipeline on purpose: the model is tested against this plain construction.
    """
    queries = model.connector.query_tokens["image"].shape[1]
    rows, media, slots = [], {}, {}
    for sample in samples:
        ids, labels, blocks = [1], [IGNORE_INDEX], []
        for part in sample:
            if isinstance(part[0], str):  # (modality, tensor)
                blocks.append((part[0], part[1], len(ids)))
                ids += [0] * queries
                labels += [IGNORE_INDEX] * queries
            else:
                tokens, supervised = part
                ids += tokens
                labels += tokens if supervised else [IGNORE_INDEX] * len(tokens)
        rows.append((ids, labels, blocks))
    length = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for row, (ids, row_labels, blocks) in enumerate(rows):
        start = 0 if padding_side == "right" else length - len(ids)
        input_ids[row, start : start + len(ids)] = torch.tensor(ids)
        labels[row, start : start + len(ids)] = torch.tensor(row_labels)
        mask[row, start : start + len(ids)] = 1
        for modality, tensor, offset in blocks:
            media.setdefault(modality, []).append(tensor)
            first = row * length + start + offset
            slots.setdefault(modality, []).append(torch.arange(first, first + queries))
    return ChatBridgeBatch(
        input_ids=input_ids,
        attention_mask=mask,
        labels=labels,
        media={name: torch.stack(tensors) for name, tensors in media.items()},
        soft_token_positions={name: torch.stack(rows) for name, rows in slots.items()},
    )


def sample_with(modalities: list[str], seed: int, answer_length: int = 3) -> list:
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 100, (2 + seed % 3,), generator=generator).tolist()
    answer = torch.randint(3, 100, (answer_length,), generator=generator).tolist()
    sample: list = [(prompt, False)]
    for modality in modalities:
        sample += [(modality, random_media(modality, generator)), ([5, 6], False)]
    return sample + [(answer, True)]


@pytest.mark.parametrize(
    ("modality", "leading"), [("image", (2,)), ("video", (2,)), ("audio", (2,))], ids=["image", "video", "audio"]
)
def test_encode_gives_query_tokens_in_llm_width(tiny_model, modality, leading):
    generator = torch.Generator().manual_seed(0)
    media = torch.stack([random_media(modality, generator) for _ in range(leading[0])])
    soft = tiny_model.encode_media(modality, media)
    assert soft.shape == (2, 4, tiny_model.llm.config.hidden_size)
    assert torch.isfinite(soft).all()


@pytest.mark.parametrize(
    "modalities", [["image"], ["video"], ["audio"], ["video", "audio"], ["image", "audio"]], ids="+".join
)
def test_forward_on_every_modality_combination(tiny_model, modalities):
    batch = make_batch(tiny_model, [sample_with(modalities, seed) for seed in range(3)])
    output = tiny_model(batch)
    assert output.num_supervised_tokens == 9
    assert output.token_losses.shape == (9,)
    assert torch.isfinite(output.loss) and output.loss > 0


def test_mixed_batch_with_different_modalities_per_sample(tiny_model):
    samples = [sample_with(["image"], 0), sample_with(["video", "audio"], 1), sample_with(["audio"], 2)]
    batch = make_batch(tiny_model, samples)
    assert batch.media["image"].shape == (1, 3, 32, 32)
    assert batch.media["video"].shape == (1, 4, 3, 32, 32)
    assert batch.media["audio"].shape == (2, 2, 64, 32)
    assert torch.isfinite(tiny_model(batch).loss)


def test_soft_tokens_land_exactly_at_the_placeholders(tiny_model):
    batch = make_batch(tiny_model, [sample_with(["video", "audio"], 0), sample_with(["audio"], 1)], "left")
    soft_tokens = tiny_model.batch_soft_tokens(batch)
    embeds = tiny_model.embed(batch.input_ids, soft_tokens, batch.soft_token_positions).flatten(0, 1)
    text = tiny_model.llm.get_input_embeddings()(batch.input_ids).flatten(0, 1)
    for modality, positions in batch.soft_token_positions.items():
        soft = tiny_model.encode_media(modality, batch.media[modality])
        torch.testing.assert_close(embeds[positions.flatten()], soft.flatten(0, 1), rtol=0, atol=0)
    untouched = torch.ones(len(text), dtype=torch.bool)
    untouched[torch.cat([p.flatten() for p in batch.soft_token_positions.values()])] = False
    torch.testing.assert_close(embeds[untouched], text[untouched], rtol=0, atol=0)


def test_exactly_the_trainable_parameters_get_gradients(tiny_model, tiny_config):
    trainable = {name for name, p in tiny_model.named_parameters() if p.requires_grad}
    assert {name.split(".")[0] for name in trainable} == {"connector", "adapters", "llm_proj"}
    batch = make_batch(tiny_model, [sample_with(["video", "audio"], 0), sample_with(["image"], 1)])
    tiny_model.train()
    tiny_model(batch).loss.backward()
    with_grad = {name for name, p in tiny_model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert all(
        tiny_model.get_submodule(name).training is False for name in ("encoders.vision", "encoders.audio", "llm")
    )
    assert tiny_model.connector.training


def test_image_only_step_leaves_audio_parameters_without_gradient(tiny_model):
    tiny_model(make_batch(tiny_model, [sample_with(["image"], 0)])).loss.backward()
    assert tiny_model.connector.query_tokens["audio"].grad is None
    assert tiny_model.adapters["audio"].weight.grad is None
    assert tiny_model.connector.query_tokens["image"].grad is not None


def test_inference_config_trains_nothing(tiny_model):
    assert set_trainable(tiny_model, []) == []
    assert count_parameters(tiny_model)[0] == 0


def test_unknown_trainable_pattern_is_an_error(tiny_model):
    with pytest.raises(ValueError, match=r"patterns \['qformer\.\*'\] match no parameter"):
        set_trainable(tiny_model, ["qformer.*"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_loss_equals_sample_by_sample(tiny_model, padding_side):
    tiny_model.eval()
    samples = [
        sample_with(["image"], 0, answer_length=2),
        sample_with(["video", "audio"], 1, answer_length=5),
        sample_with(["audio"], 2, answer_length=1),
        sample_with(["image", "audio"], 3, answer_length=4),
    ]
    with torch.no_grad():
        batched = tiny_model(make_batch(tiny_model, samples, padding_side))
        alone = [tiny_model(make_batch(tiny_model, [sample])) for sample in samples]
    total = sum(output.loss * output.num_supervised_tokens for output in alone)
    count = sum(output.num_supervised_tokens for output in alone)
    assert batched.num_supervised_tokens == count == 12
    torch.testing.assert_close(batched.loss, total / count, rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.per_sample_loss, torch.stack([o.loss for o in alone]), rtol=0, atol=1e-6)


def test_batch_without_supervised_tokens_has_zero_loss_not_nan(tiny_model):
    sample = sample_with(["image"], 0)[:-1]  # drop the answer
    output = tiny_model(make_batch(tiny_model, [sample]))
    assert output.num_supervised_tokens == 0 and output.loss.item() == 0.0
    assert output.per_sample_loss.tolist() == [0.0]


def test_per_sample_loss_is_the_mean_token_loss_of_each_row(tiny_model):
    """Hand-computed from the token losses: row 0 owns the first 2 supervised tokens, row 1 the next 5."""
    tiny_model.eval()
    batch = make_batch(tiny_model, [sample_with(["image"], 0, answer_length=2), sample_with(["audio"], 1, 5)])
    with torch.no_grad():
        output = tiny_model(batch)
    token_losses = output.token_losses
    assert token_losses.shape == (7,)
    expected = torch.stack([token_losses[:2].mean(), token_losses[2:].mean()])
    torch.testing.assert_close(output.per_sample_loss, expected, rtol=0, atol=1e-6)


def full_size_model() -> ChatBridgeModel:
    """The real architecture (EVA-g, BEATs base, 12-layer Q-Former, LLaMA-13B shapes) on the meta device."""
    config = load_config(REPO / "train_configs" / "chatbridge_pretrain.yaml", require_paths=False).model
    with torch.device("meta"):
        model = assemble_chatbridge(config, build_causal_lm_on_meta(LLAMA_13B))
    set_trainable(model, config.trainable)
    return model


def test_full_size_model_has_the_reference_trainable_parameter_count():
    trainable, frozen = count_parameters(full_size_model())
    assert trainable == 110_206_848  # docs/reference/chatbridge.md §1.14
    assert frozen > 13_000_000_000


# (key, shape) pairs read off the reference's key tables (§3.1-3.5): the released layout, independent of our mapping.
SPEC_KEYS = {
    "visual_encoder.pos_embed": (1, 257, 1408),
    "visual_encoder.patch_embed.proj.weight": (1408, 3, 14, 14),
    "visual_encoder.blocks.38.attn.qkv.weight": (4224, 1408),
    "visual_encoder.blocks.38.attn.q_bias": (1408,),
    "visual_encoder.blocks.38.mlp.fc1.weight": (6144, 1408),
    "ln_vision.weight": (1408,),
    "audio_encoder.patch_embedding.weight": (512, 1, 16, 16),
    "audio_encoder.post_extract_proj.weight": (768, 512),
    "audio_encoder.encoder.pos_conv.0.weight_g": (1, 1, 128),
    "audio_encoder.encoder.pos_conv.0.weight_v": (768, 48, 128),
    "audio_encoder.encoder.layers.11.self_attn.grep_linear.weight": (8, 64),
    "audio_encoder.encoder.layers.11.self_attn.grep_a": (1, 12, 1, 1),
    "audio_encoder.encoder.layers.0.self_attn.relative_attention_bias.weight": (320, 12),
    "ln_audio.weight": (768,),
    "audio_trans.weight": (1408, 768),
    "Qformer.bert.embeddings.position_ids": (1, 512),
    "Qformer.bert.embeddings.LayerNorm.weight": (768,),
    "Qformer.bert.encoder.layer.0.attention.self.query.weight": (768, 768),
    "Qformer.bert.encoder.layer.10.crossattention.self.key.weight": (768, 1408),
    "Qformer.bert.encoder.layer.11.intermediate_query.dense.weight": (3072, 768),
    "Qformer.bert.encoder.layer.11.output_query.dense.weight": (768, 3072),
    "image_query_tokens": (1, 32, 768),
    "audio_query_tokens": (1, 32, 768),
    "llama_model.model.embed_tokens.weight": (32000, 5120),
    "llama_model.model.layers.39.self_attn.rotary_emb.inv_freq": (64,),
    "llama_model.model.layers.39.mlp.gate_proj.weight": (13824, 5120),
    "llama_model.lm_head.weight": (32000, 5120),
    "llama_proj.weight": (5120, 768),
}


def test_full_size_released_layout_loads_with_nothing_missing_or_unexpected():
    model = full_size_model()
    released = released_state_dict(model)
    assert {key: tuple(released[key].shape) for key in SPEC_KEYS} == SPEC_KEYS
    assert "Qformer.bert.encoder.layer.1.crossattention.self.key.weight" not in released  # cross-attn every 2nd
    ours = released_to_chatbridge(released)  # raises on any unexpected key
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    loaded_but_frozen = {"encoders.vision.ln_vision.weight", "encoders.vision.ln_vision.bias"}
    loaded_but_frozen |= {"encoders.audio.ln_audio.weight", "encoders.audio.ln_audio.bias"}
    assert set(ours) == trainable | loaded_but_frozen
    own = model.state_dict()
    assert all(ours[key].shape == own[key].shape for key in ours)


def outputs_of(model: ChatBridgeModel) -> torch.Tensor:
    model.eval()
    batch = make_batch(model, [sample_with(["video", "audio"], 0), sample_with(["image"], 1)])
    with torch.no_grad():
        return model(batch).token_losses


def fresh_model(config: ModelConfig, seed: int) -> ChatBridgeModel:
    model = build_chatbridge(dataclasses.replace(config, init_seed=seed))
    set_trainable(model, config.trainable)
    return model


@pytest.mark.parametrize("module_prefix", [False, True], ids=["plain", "ddp-prefix"])
def test_released_checkpoint_round_trip(tiny_model, tiny_config, tmp_path, module_prefix):
    with torch.no_grad():  # give ln_audio, ln_vision non-default values so that loading them is visible
        tiny_model.encoders["audio"].ln_audio.weight.uniform_(0.5, 1.5)
        tiny_model.encoders["vision"].ln_vision.bias.uniform_(-0.1, 0.1)
    path = tmp_path / "chatbridge_released.pth"
    write_released_checkpoint(tiny_model, path, module_prefix=module_prefix)
    other = fresh_model(tiny_config, seed=1)
    other.load_state_dict(
        {
            k: v
            for k, v in tiny_model.state_dict().items()
            if k.startswith(("encoders.vision.backbone", "encoders.audio.backbone"))
        },
        strict=False,
    )  # towers come from their own files
    assert not torch.equal(outputs_of(other), outputs_of(tiny_model))
    load_chatbridge_checkpoint(other, path)
    torch.testing.assert_close(outputs_of(other), outputs_of(tiny_model), rtol=0, atol=0)


def test_converted_checkpoint_loads_to_identical_outputs(tiny_model, tiny_config, tmp_path):
    from chatbridge.config import TrainConfig

    write_released_checkpoint(tiny_model, tmp_path / "released.pth")
    folder = convert_released_checkpoint(tmp_path / "released.pth", tmp_path / "ours", TrainConfig(model=tiny_config))
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model.safetensors"]
    other = fresh_model(tiny_config, seed=2)
    other.load_state_dict({k: v for k, v in tiny_model.state_dict().items() if ".backbone." in k}, strict=False)
    load_chatbridge_checkpoint(other, folder)
    torch.testing.assert_close(outputs_of(other), outputs_of(tiny_model), rtol=0, atol=0)


def test_our_checkpoint_holds_only_trainable_tensors(tiny_model, tiny_config, tmp_path):
    from safetensors.torch import load_file

    from chatbridge.config import TrainConfig

    folder = save_chatbridge_checkpoint(tiny_model, TrainConfig(model=tiny_config), tmp_path / "ckpt")
    saved = load_file(folder / "model.safetensors")
    assert set(saved) == {name for name, p in tiny_model.named_parameters() if p.requires_grad}
    other = fresh_model(tiny_config, seed=3)
    load_chatbridge_checkpoint(other, folder)
    assert all(torch.equal(saved[name], other.state_dict()[name]) for name in saved)


def test_released_checkpoint_with_unknown_key_fails_loudly(tiny_model):
    released = released_state_dict(tiny_model) | {"mystery.weight": torch.zeros(1)}
    with pytest.raises(
        ValueError, match=r"x.pth: not a ChatBridge checkpoint: missing \[\], unexpected \['mystery.weight'\]"
    ):
        released_to_chatbridge(released, source="x.pth")


def test_released_checkpoint_without_projection_fails_loudly(tiny_model):
    released = {k: v for k, v in released_state_dict(tiny_model).items() if not k.startswith("llama_proj.")}
    with pytest.raises(ValueError, match=r"missing \['llama_proj.'\], unexpected \[\]"):
        released_to_chatbridge(released, source="x.pth")


def test_temporal_embeddings_in_checkpoint_need_the_option(tiny_model, tiny_config, tmp_path):
    from chatbridge.models.loading import assign_tensors

    extra = {"connector.temporal_embeddings.image": torch.zeros(1, 4, 1, 32)}
    with pytest.raises(ValueError, match="built without model.connector.temporal_embeddings"):
        assign_tensors(tiny_model, extra, "x.pth")
    config = dataclasses.replace(
        tiny_config, connector=dataclasses.replace(tiny_config.connector, temporal_embeddings=True)
    )
    assign_tensors(fresh_model(config, seed=0), extra, "x.pth")


def test_activation_checkpointing_changes_neither_loss_nor_gradients(tiny_model):
    from chatbridge.models.setup import enable_activation_checkpointing

    batch = make_batch(tiny_model, [sample_with(["video", "audio"], 0), sample_with(["image"], 1)])

    kept = []  # elements of the tensors each forward keeps for the backward pass (outside checkpointed layers)

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tiny_model.zero_grad(set_to_none=True)
        kept.append(0)

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            kept[-1] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = tiny_model(batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    runs = []  # how often the first LLM layer's MLP runs per step: once, or twice when recomputed
    tiny_model.llm.get_decoder().layers[0].mlp.register_forward_pre_hook(lambda *_: runs.append(1))

    tiny_model.train()
    plain_loss, plain_grads = loss_and_grads()
    assert len(runs) == 1
    assert enable_activation_checkpointing(tiny_model) == ["connector.qformer", "llm"]
    enable_activation_checkpointing(tiny_model)  # a second call changes nothing
    wrapped = tiny_model.llm.get_decoder().layers[0].forward  # partial(checkpointed, the layer's own forward)
    assert inspect.ismethod(wrapped.args[0]), "a second call wrapped the layer twice"
    assert not tiny_model.llm.training  # frozen: stays in eval mode (no dropout), and is checkpointed all the same
    loss, grads = loss_and_grads()
    assert kept[1] < 0.5 * kept[0]
    assert len(runs) == 1 + 2  # the checkpointed step: the forward pass and one recomputation
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-6, atol=1e-7)


def test_every_part_loads_from_its_official_file_format(tiny_config, tmp_path):
    """EVA `.pth`, BEATs `{cfg, model}` `.pt`, BLIP-2 `.pth` (written tiny, in the real layouts) through the real
    loaders, then checked tensor by tensor inside the assembled model."""
    from chatbridge.models.encoders.beats import old_to_new_weight_norm_keys
    from chatbridge.models.setup import build_model_for_training
    from tests.fixtures.beats import write_tiny_beats_checkpoint
    from tests.fixtures.blip2 import write_tiny_blip2_checkpoint
    from tests.fixtures.eva import write_tiny_eva_checkpoint

    eva = write_tiny_eva_checkpoint(tmp_path / "eva_vit_g.pth", image_size=32, patch_size=8, width=32, depth=2)
    audio_cfg = tiny_config.encoders["audio"]
    beats = write_tiny_beats_checkpoint(
        tmp_path / "BEATs.pt", encoder_embed_dim=audio_cfg.width, encoder_ffn_embed_dim=audio_cfg.ffn_dim
    )
    blip2 = write_tiny_blip2_checkpoint(tmp_path / "blip2.pth")
    encoders = {
        "vision": dataclasses.replace(tiny_config.encoders["vision"], checkpoint=str(tmp_path / "eva_vit_g.pth")),
        "audio": dataclasses.replace(audio_cfg, checkpoint=str(tmp_path / "BEATs.pt")),
    }
    config = dataclasses.replace(
        tiny_config,
        encoders=encoders,
        connector=dataclasses.replace(tiny_config.connector, blip2_checkpoint=str(tmp_path / "blip2.pth")),
    )
    model = build_model_for_training(config)
    state = model.state_dict()
    assert torch.equal(state["encoders.vision.backbone.blocks.1.attn.qkv.weight"], eva["blocks.1.attn.qkv.weight"])
    beats_new = old_to_new_weight_norm_keys(beats["model"])
    key = "encoder.pos_conv.0.parametrizations.weight.original1"
    assert torch.equal(state[f"encoders.audio.backbone.{key}"], beats_new[key])
    assert torch.equal(state["connector.query_tokens.image"], blip2["query_tokens"])
    assert torch.equal(state["encoders.vision.ln_vision.weight"], blip2["ln_vision.weight"])
    assert torch.equal(
        state["connector.qformer.encoder.layer.0.crossattention.attention.key.weight"],
        blip2["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"],
    )


def test_conversion_command_writes_a_loadable_folder(tiny_model, tiny_config, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    write_released_checkpoint(tiny_model, tmp_path / "released.pth")
    command = [
        sys.executable,
        str(repo / "scripts" / "convert_checkpoint.py"),
        "--checkpoint",
        str(tmp_path / "released.pth"),
        "--cfg-path",
        str(repo / "eval_configs" / "chatbridge_tiny_eval.yaml"),
        "--out",
        str(tmp_path / "converted"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    other = fresh_model(tiny_config, seed=4)
    other.load_state_dict({k: v for k, v in tiny_model.state_dict().items() if ".backbone." in k}, strict=False)
    load_chatbridge_checkpoint(other, tmp_path / "converted")
    torch.testing.assert_close(outputs_of(other), outputs_of(tiny_model), rtol=0, atol=0)


def test_a_checkpoint_of_format_1_is_converted_and_a_newer_format_refused(tiny_model, tiny_config, tmp_path):
    """Format 1 (before encoders were held by key) wrote no version and the old names; it must load as it was."""
    from safetensors.torch import save_file

    from chatbridge.models.loading import trainable_state_dict

    old_names = {"connector.": "perceiver.", "adapters.audio.": "audio_adapter.", "encoders.vision.": "image_encoder."}
    format_1 = {}
    for name, tensor in trainable_state_dict(tiny_model).items():
        prefix = next((new for new in old_names if name.startswith(new)), "")
        format_1[old_names.get(prefix, "") + name.removeprefix(prefix)] = tensor
    assert "perceiver.query_tokens.image" in format_1 and "audio_adapter.weight" in format_1
    save_file(format_1, tmp_path / "model.safetensors")  # exactly what format 1 wrote: no metadata
    other = fresh_model(tiny_config, seed=5)
    other.load_state_dict({k: v for k, v in tiny_model.state_dict().items() if ".backbone." in k}, strict=False)
    load_chatbridge_checkpoint(other, tmp_path)
    torch.testing.assert_close(outputs_of(other), outputs_of(tiny_model), rtol=0, atol=0)
    save_file(format_1, tmp_path / "future.safetensors", {"chatbridge_format": "3"})
    with pytest.raises(ValueError, match=r"future.safetensors is checkpoint format 3, newer than this chatbridge"):
        load_chatbridge_checkpoint(other, tmp_path / "future.safetensors")


def test_a_released_checkpoint_missing_a_qformer_layer_is_refused_naming_the_keys(tiny_model, tmp_path):
    state = write_released_checkpoint(tiny_model, tmp_path / "full.pth")
    partial = {k: v for k, v in state.items() if not k.startswith("Qformer.bert.encoder.layer.1.")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial.pth: lacks \d+ tensors .*connector.qformer.encoder.layer.1."):
        load_chatbridge_checkpoint(tiny_model, tmp_path / "partial.pth")


def test_a_pickle_with_objects_is_refused_naming_the_file_and_key(tiny_model, tmp_path):
    import argparse

    torch.save({"model": {}, "trap": argparse.Namespace(run="code")}, tmp_path / "trap.pth")
    with pytest.raises(ValueError, match=r"^model.checkpoint: .*trap.pth holds Python objects besides tensors"):
        load_chatbridge_checkpoint(tiny_model, tmp_path / "trap.pth")


def test_a_frozen_tower_in_low_precision_keeps_norms_embeddings_and_free_biases_in_fp32(tiny_config):
    from chatbridge.models.setup import build_model_for_training

    vision = dataclasses.replace(tiny_config.encoders["vision"], precision="bf16")
    config = dataclasses.replace(tiny_config, encoders={**tiny_config.encoders, "vision": vision})
    model = build_model_for_training(config).eval()
    reference = build_model_for_training(tiny_config).eval()  # the same weights, all fp32
    dtypes = {name: p.dtype for name, p in model.encoders["vision"].named_parameters()}
    assert dtypes["backbone.blocks.0.attn.qkv.weight"] == torch.bfloat16
    assert dtypes["backbone.patch_embed.proj.weight"] == torch.bfloat16
    for kept in (
        "backbone.cls_token",
        "backbone.pos_embed",
        "backbone.blocks.0.attn.q_bias",
        "backbone.blocks.0.norm1.weight",
        "ln_vision.weight",
    ):
        assert dtypes[kept] == torch.float32, kept
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        low, full = model.tower_features("image", images), reference.tower_features("image", images)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)  # bf16 matrices, fp32 stream and norms
