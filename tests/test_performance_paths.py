"""The fast paths of the training step compute what the plain ones compute.

Losses at supervised positions only (gathered by index, the last column never run through the LLM) against the
full LLM output; frozen towers and the LLM stored in bf16 against fp32 storage under the same bf16 autocast; the
attention kernel `model.attention` gives each part, and a frozen tower's features under either kernel.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from chatbridge.data.batch import IGNORE_INDEX
from chatbridge.models.setup import build_model_for_training, prepare_for_training
from tests.test_model import make_batch


def samples_for(config) -> list[list]:
    """An image sample and a longer video sample (4 frames), with media at the preset's resolution."""
    side = config.encoders["vision"].image_size
    generator = torch.Generator().manual_seed(0)
    image, video = torch.randn(3, side, side, generator=generator), torch.randn(4, 3, side, side, generator=generator)
    return [
        [([7, 8], False), ("image", image), ([5, 6], False), ([9, 10, 11], True)],
        [([7], False), ("video", video), ([5, 6], False), ([12, 13, 14, 15, 16], True)],
    ]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_supervised_token_losses_equal_those_of_the_full_llm_logits(tiny_model, tiny_config, padding_side):
    tiny_model.eval()
    batch = make_batch(tiny_model, samples_for(tiny_config), padding_side)
    with torch.no_grad():
        output = tiny_model(batch)
        embeds = tiny_model.embed(batch.input_ids, tiny_model.batch_soft_tokens(batch), batch.soft_token_positions)
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        full = tiny_model.llm(  # (B, L, V): every position, the last column included
            inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions, use_cache=False
        ).logits.float()
    targets = batch.labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    expected = F.cross_entropy(full[:, :-1][supervised], targets[supervised], reduction="none")  # (K,)
    assert output.token_losses.shape == expected.shape == (int(supervised.sum()),)
    torch.testing.assert_close(output.token_losses, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.loss, expected.mean(), rtol=1e-5, atol=1e-6)


def with_precision(config, precision: str):
    """The model config with every frozen tower and the LLM stored in `precision`."""
    encoders = {key: dataclasses.replace(encoder, precision=precision) for key, encoder in config.encoders.items()}
    return dataclasses.replace(config, encoders=encoders, llm=dataclasses.replace(config.llm, precision=precision))


def test_frozen_parts_stored_in_bf16_give_the_loss_and_gradients_of_fp32_storage_under_autocast(tiny_config):
    stored_bf16 = build_model_for_training(with_precision(tiny_config, "bf16")).train()
    stored_fp32 = build_model_for_training(with_precision(tiny_config, "fp32")).train()  # autocast casts each step
    assert stored_bf16.llm.dtype == torch.bfloat16
    assert stored_bf16.encoders["vision"].backbone.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert stored_fp32.llm.dtype == torch.float32
    batch = make_batch(stored_fp32, samples_for(tiny_config))
    losses, grads = [], []
    for model in (stored_bf16, stored_fp32):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.llm_proj.weight.grad.clone())
    assert torch.isfinite(losses[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=0.02, atol=0.02)
    cosine = F.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert cosine > 0.98, f"gradient directions differ: cosine {cosine:.4f}"


def attention_kernels(model) -> dict[str, set[str]]:
    """Which attention kernel each part runs: timm's `fused_attn` flags (EVA) and Hugging Face's implementation."""
    kernels: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        part = name.split(".")[0] if not name.startswith("encoders.") else ".".join(name.split(".")[:2])
        if hasattr(module, "fused_attn"):
            kernels.setdefault(part, set()).add("sdpa" if module.fused_attn else "eager")
        elif hasattr(module, "config") and hasattr(module.config, "_attn_implementation"):
            kernels.setdefault(part, set()).add(module.config._attn_implementation)
    return kernels


@pytest.mark.parametrize(
    ("choice", "device_type", "tower", "trained_through"),
    [("auto", "cpu", "sdpa", "eager"), ("auto", "cuda", "sdpa", "sdpa"), ("eager", "cpu", "eager", "eager")],
)
def test_attention_choice_gives_frozen_towers_and_trained_through_parts_their_kernels(
    tiny_config, choice, device_type, tower, trained_through
):
    config = dataclasses.replace(tiny_config, attention=choice)
    model = build_model_for_training(config)
    prepare_for_training(model, config, device_type)  # again, for the device type under test
    kernels = attention_kernels(model)
    assert kernels["encoders.vision"] == {tower}
    assert kernels["connector"] == kernels["llm"] == {trained_through}


def test_fused_and_eager_attention_give_the_same_frozen_tower_features(tiny_config):
    model = build_model_for_training(tiny_config).eval()
    image = samples_for(tiny_config)[0][1][1].unsqueeze(0)
    features = {}
    for fused in (True, False):
        for module in model.encoders["vision"].modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused
        with torch.no_grad():
            features[fused] = model.tower_features("image", image)
    torch.testing.assert_close(features[True], features[False], rtol=1e-5, atol=1e-5)
    assert not torch.equal(features[True], features[False])  # two kernels ran, not one twice
