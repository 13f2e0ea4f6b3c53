"""The peer: transformers' `Blip2ForConditionalGeneration` with our preset's dims, trainable set, batch and precision.

Default settings: fp32 weights (autocast casts them every step), SDPA attention, logits at every position. Best
settings: frozen vision model and LLM stored in the step's precision, eager attention in the parts trained through
(SDPA in the forward-only vision model), logits at BOS and the caption only, selected by an index tensor
(`logits_to_keep`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from bench_common import DTYPES, IGNORE_INDEX, Preset, autocast, llama_config, our_media


def build_peer(preset: Preset, precision: str, best: bool):
    """transformers' BLIP-2 with our dimensions and trainable set.

    Default settings: fp32 weights (autocast casts them), SDPA attention, Q-Former dropout 0.1. Best settings
    (`best`): frozen vision model and LLM stored in the step's precision, eager attention in the Q-Former and the
    LLM and SDPA in the vision model, no dropout (the step then also asks for logits at the caption positions only,
    see `peer_step`).
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config={
            "hidden_size": preset.vit_width,
            "intermediate_size": preset.vit_mlp,
            "num_hidden_layers": preset.vit_depth,
            "num_attention_heads": preset.vit_heads,
            "image_size": preset.image_size,
            "patch_size": preset.patch_size,
        },
        qformer_config={
            "hidden_size": preset.qformer_width,
            "num_hidden_layers": preset.qformer_layers,
            "num_attention_heads": preset.qformer_heads,
            "intermediate_size": preset.qformer_mlp,
            "encoder_hidden_size": preset.vit_width,
            "cross_attention_frequency": 2,
            # Best: no dropout, as in ChatBridge's stage 1 (ours too); BLIP-2's default is 0.1.
            **({"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if best else {}),
        },
        text_config=llama_config(preset).to_dict(),
        num_query_tokens=preset.queries,
        image_token_index=preset.vocab - 1,
    )
    config._attn_implementation = "eager" if best else "sdpa"
    if best:  # the frozen vision model runs forward only, where SDPA is the faster kernel (as in ours)
        config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    # Best: built in the step's precision as `from_pretrained(dtype=...)` loads it, which keeps the modules the
    # class lists in `_keep_in_fp32_modules` (the Q-Former and the queries) in fp32; `_from_config` does not, so
    # that is done here. The trained projection gets fp32 master weights like ours.
    model = Blip2ForConditionalGeneration._from_config(config, dtype=DTYPES[precision] if best else torch.float32)
    for name in model._keep_in_fp32_modules or ():
        part = getattr(model, name)
        if isinstance(part, torch.nn.Parameter):
            part.data = part.data.float()
        else:
            part.float()
    model.language_projection.float()
    model.requires_grad_(False)
    for part in (model.qformer, model.language_projection):
        part.requires_grad_(True)
    model.query_tokens.requires_grad_(True)
    model.train()
    model.vision_model.eval()
    model.language_model.eval()
    return model


def peer_batch(preset: Preset, best: bool) -> dict[str, torch.Tensor]:
    """[Q image tokens][BOS][caption]; the best setting asks for logits at BOS and the caption only, by index
    (a slice would hand a strided view to the LM head, which is far slower in bf16 on CPU)."""
    generator = torch.Generator().manual_seed(0)
    batch, queries = preset.batch, preset.queries
    length = queries + 1 + preset.caption
    ids = torch.randint(3, preset.vocab - 1, (batch, length), generator=generator)
    ids[:, :queries] = preset.vocab - 1
    ids[:, queries] = 1
    labels = ids.clone()
    labels[:, : queries + 1] = IGNORE_INDEX
    inputs = {
        "pixel_values": our_media(preset, ("image",))["image"],
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
    }
    if best:
        inputs["logits_to_keep"] = torch.arange(queries, length)
        inputs["labels"] = labels[:, queries:]
    return inputs


def peer_step(model, inputs: dict[str, torch.Tensor], precision: str) -> Callable[[], None]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision):
            output = model(**inputs)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    return step
