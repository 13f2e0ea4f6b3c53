"""Shared parts of the training-step benchmarks: presets, our model and its steps, timing and reporting.

Ours is built by the package's own code (`assemble_chatbridge` + `prepare_for_training`, what `train.py` runs after
loading weights); the LLM is a random LLaMA of the preset's size made in memory, because a 32k-vocabulary
tokenizer folder is not needed to time a step. The peer is transformers' `Blip2ForConditionalGeneration` with the
same vision, Q-Former and LLaMA dimensions, the same trainable set (Q-Former, queries, projection), the same batch
and the same precision (the peer itself is in `bench_peer.py`, memory runs in `bench_memory.py`, the FLOP model in
`flops.py`). Numbers, not assertions: none of this runs in the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/<script>.py` from anywhere
    sys.path.insert(0, str(REPO))

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Preset:
    """Dimensions of one benchmark size (the same for ours and the peer)."""

    image_size: int
    patch_size: int
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp: int
    qformer_width: int
    qformer_layers: int
    qformer_heads: int
    qformer_mlp: int
    queries: int
    llm_width: int
    llm_layers: int
    llm_heads: int
    llm_mlp: int
    vocab: int
    batch: int
    caption: int
    frames: int = 4
    """Frames per video (video and stage-2 steps)."""
    audio_width: int = 384
    """BEATs width; narrower than the ViT, so the audio adapter (`audio_trans`) exists as in ChatBridge."""
    audio_depth: int = 4
    audio_heads: int = 6
    audio_frames: int = 1024
    """Fbank frames per audio segment (BEATs: 1024 x 64 -> 256 patches)."""
    prompt: int = 48
    """Stage-2 instruction tokens before the media (stage 2 only)."""


PRESETS = {
    "bench-small": Preset(
        image_size=224,
        patch_size=14,
        vit_width=384,
        vit_depth=6,
        vit_heads=6,
        vit_mlp=1536,
        qformer_width=384,
        qformer_layers=2,
        qformer_heads=6,
        qformer_mlp=1536,
        queries=32,
        llm_width=512,
        llm_layers=4,
        llm_heads=8,
        llm_mlp=1408,
        vocab=32000,
        batch=8,
        caption=32,
        audio_width=256,
        audio_heads=4,
    ),  # fmt: skip
    "bench-medium": Preset(
        image_size=224,
        patch_size=14,
        vit_width=512,
        vit_depth=6,
        vit_heads=8,
        vit_mlp=2048,
        qformer_width=512,
        qformer_layers=4,
        qformer_heads=8,
        qformer_mlp=2048,
        queries=32,
        llm_width=1024,
        llm_layers=8,
        llm_heads=16,
        llm_mlp=2816,
        vocab=32000,
        batch=8,
        caption=32,
    ),  # fmt: skip
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------- ours


def our_model_config(preset: Preset, precision: str, **model_options):
    """The `ModelConfig` of ChatBridge at the preset's size: EVA + BEATs towers, shared Q-Former, LLaMA."""
    from chatbridge.config import LLMConfig, ModelConfig, RouteConfig
    from chatbridge.models.connectors.qformer import QFormerConfig
    from chatbridge.models.encoders.beats import BeatsConfig
    from chatbridge.models.encoders.eva import EvaViTConfig

    vision = EvaViTConfig(
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        width=preset.vit_width,
        depth=preset.vit_depth,
        num_heads=preset.vit_heads,
        mlp_ratio=preset.vit_mlp / preset.vit_width,
        precision=precision,
    )
    audio = BeatsConfig(
        width=preset.audio_width,
        depth=preset.audio_depth,
        num_heads=preset.audio_heads,
        ffn_dim=4 * preset.audio_width,
        precision=precision,
    )
    connector = QFormerConfig(
        num_layers=preset.qformer_layers,
        hidden_size=preset.qformer_width,
        num_heads=preset.qformer_heads,
        intermediate_size=preset.qformer_mlp,
        num_query_tokens=preset.queries,
    )
    routes = {
        "image": RouteConfig("vision", "image"),
        "video": RouteConfig("vision", "image"),
        "audio": RouteConfig("audio", "audio"),
    }
    return ModelConfig(
        encoders={"vision": vision, "audio": audio},
        routes=routes,
        memory_encoder="vision",
        connector=connector,
        llm=LLMConfig(precision=precision),
        **model_options,
    )


def llama_config(preset: Preset):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=preset.vocab,
        hidden_size=preset.llm_width,
        intermediate_size=preset.llm_mlp,
        num_hidden_layers=preset.llm_layers,
        num_attention_heads=preset.llm_heads,
        max_position_embeddings=2048,
    )


def build_ours(preset: Preset, precision: str, compile_blocks: bool = False, **model_options):
    """ChatBridge as `train.py` builds it (`run.compile` = `compile_blocks`), with a random frozen LLaMA in the LLM's
    precision (as `from_pretrained` would load it), in training mode."""
    from transformers import LlamaForCausalLM

    from chatbridge.models import setup
    from chatbridge.models.chatbridge import assemble_chatbridge

    cfg = our_model_config(preset, precision, **model_options)
    torch.manual_seed(0)
    llm = LlamaForCausalLM._from_config(llama_config(preset), dtype=DTYPES[precision])
    llm.requires_grad_(False).eval()
    model = assemble_chatbridge(cfg, llm)
    setup.prepare_for_training(model, cfg, "cpu")
    if compile_blocks:
        setup.compile_blocks(model)
    return model.train()


def our_optimizer(model):
    from chatbridge.training.optim import build_optimizer

    return build_optimizer(model, 1e-4, 0.05, decay_everything=False)


def our_batch(preset: Preset, media: dict[str, torch.Tensor], text_before: int = 0):
    """A stage-1 (or stage-2) batch: [BOS][prompt][Q soft tokens per medium][caption], every caption supervised."""
    from chatbridge.data.batch import ChatBridgeBatch

    generator = torch.Generator().manual_seed(0)
    batch, queries = preset.batch, preset.queries
    length = 1 + text_before + queries * len(media) + preset.caption
    ids = torch.randint(3, preset.vocab, (batch, length), generator=generator)
    ids[:, 0] = 1
    labels = ids.clone()
    labels[:, : length - preset.caption] = IGNORE_INDEX
    rows = torch.arange(batch).unsqueeze(1) * length  # (B, 1)
    positions = {}
    for index, modality in enumerate(media):
        start = 1 + text_before + index * queries
        positions[modality] = rows + torch.arange(start, start + queries)  # (B, Q)
    mask = torch.ones_like(ids)
    return ChatBridgeBatch(ids, mask, labels, media=dict(media), soft_token_positions=positions)


def our_media(preset: Preset, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    side, frames = preset.image_size, preset.frames
    shapes = {
        "image": (preset.batch, 3, side, side),
        "video": (preset.batch, frames, 3, side, side),
        "audio": (preset.batch, 1, preset.audio_frames, 64),
    }
    return {modality: torch.randn(shapes[modality], generator=generator) for modality in modalities}


def our_step(model, optimizer, batch, precision: str) -> Callable[[], None]:
    """One training step as `training/loop.py` runs it: autocast forward, backward, clip, AdamW."""
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision):
            output = model(batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    return step


def autocast(precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=DTYPES[precision])


# ----------------------------------------------------------------------------------------------- steps by name


@dataclasses.dataclass(frozen=True)
class OurVariant:
    """One of our training steps: which media, and which of the training loop's switches are on."""

    modalities: tuple[str, ...] = ("image",)
    stage2_prompt: bool = False  # an instruction before the media, as in stage 2
    compiled: bool = False  # run.compile
    attention: str = "auto"  # model.attention
    checkpointed: bool = False  # run.activation_checkpointing
    cached: bool = False  # the image features read from the feature cache (run.feature_cache)


OUR_VARIANTS = {
    "ours": OurVariant(),
    "ours-compiled": OurVariant(compiled=True),
    "ours-sdpa": OurVariant(attention="sdpa"),
    "ours-cached": OurVariant(cached=True),
    "ours-checkpointed": OurVariant(checkpointed=True),
    "ours-video": OurVariant(("video",)),
    "ours-video-compiled": OurVariant(("video",), compiled=True),
    "ours-stage2": OurVariant(("video", "audio"), stage2_prompt=True),
    "ours-stage2-compiled": OurVariant(("video", "audio"), stage2_prompt=True, compiled=True),
}


def make_step(variant: str, preset: Preset, precision: str) -> Callable[[], None]:
    """A ready-to-call training step: one of `OUR_VARIANTS` (stage-1 image, video, stage-2 video + audio; default
    settings or compiled), `peer-default` or `peer-best`."""
    if variant.startswith("peer"):
        from bench_peer import build_peer, peer_batch, peer_step  # it imports this module

        best = variant == "peer-best"
        return peer_step(build_peer(preset, precision, best), peer_batch(preset, best), precision)
    ours = OUR_VARIANTS[variant]
    model = build_ours(preset, precision, compile_blocks=ours.compiled, attention=ours.attention)
    if ours.checkpointed:
        from chatbridge.models.setup import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    text_before = preset.prompt if ours.stage2_prompt else 0
    batch = our_batch(preset, our_media(preset, ours.modalities), text_before)
    if ours.cached:  # what `run.feature_cache` hands the model: the frozen tower's outputs
        with torch.no_grad():
            features = model.tower_features("image", batch.media["image"]).unsqueeze(1)  # (N, 1, L, D)
        batch = dataclasses.replace(batch, media={}, features={"image": features})
    return our_step(model, our_optimizer(model), batch, precision)


# ----------------------------------------------------------------------------------------------- timing


def time_call(call: Callable[[], None], repeats: int) -> float:
    """Seconds per call, over `repeats` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def alternate(calls: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each entry, taking turns round by round (so that whatever else the machine does
    hits all of them alike)."""
    for call in calls.values():
        time_call(call, warmup)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            samples[name].append(time_call(call, steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def matmul_peak_call(dtype: torch.dtype, size: int = 2048) -> tuple[Callable[[], None], float]:
    """(call, FLOPs per call): a square matmul, this machine's reference for "peak"."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    return (lambda: a @ b), 2.0 * size**3


# ----------------------------------------------------------------------------------------------- reporting


def machine() -> str:
    """CPU model name and cores, as `lscpu` reports them, plus the torch version."""
    name = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for line in subprocess.run(["lscpu"], check=True, capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def add_machine_arguments(parser) -> None:
    """`--threads`: intra-op threads (default: torch's, one per core). With another job on the machine, one thread
    per free core avoids every parallel region waiting for a descheduled thread."""
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")


def use_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def footer(preset_name: str) -> str:
    """The preset's dims, the machine and the load average, printed under every table."""
    return f"{describe(preset_name)}\n{machine()}; load average at the end {os.getloadavg()[0]:.2f}"


def describe(preset_name: str) -> str:
    return f"{preset_name}: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(PRESETS[preset_name]).items())
