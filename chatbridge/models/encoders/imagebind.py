"""ImageBind-Huge as ChatBind uses it: one pooled, L2-normalised joint embedding per image, video clip or audio clip.

See docs/reference/chatbind.md §1, §2.1-2.2 and §3. Images and video clips go through the vision trunk (an image is
repeated into a 2-frame clip), audio clips through the audio trunk (whose embedding keeps ImageBind's x20 logit
scale, §2.2.3). Each item becomes ONE token, `(N, 1, embed_dim)`: the encoder never averages; a video's 15 clips and
an audio track's 3 clips reach the connector as the items of one block (`item_mean` averages them).

Weights: Meta's `imagebind_huge.pth` (CC BY-NC 4.0) is a plain state dict of all six trunks. `load_checkpoint`
takes the vision and audio entries strictly (every one must be there, under the map `OFFICIAL_TO_OURS`), skips the
text, depth, thermal and IMU trunks by their declared prefixes (`UNUSED_PREFIXES`) and rejects anything else; the
reference's `strict=False` load would have hidden a missing vision key (§9.4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chatbridge.config import EncoderConfig
from chatbridge.models.encoders.imagebind_network import Trunk, audio_trunk, vision_trunk
from chatbridge.registry import ENCODERS

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TRUNK_OF_MODALITY = {"image": "vision", "video": "vision", "audio": "audio"}
"""Which trunk encodes which of our modalities (the reference's dict key is "vision" for images and videos)."""
UNUSED_TRUNKS = ("text", "depth", "thermal", "imu")
UNUSED_PREFIXES = tuple(
    f"modality_{part}.{trunk}."
    for part in ("preprocessors", "trunks", "heads", "postprocessors")
    for trunk in UNUSED_TRUNKS
)
"""Checkpoint entries ChatBind never feeds (§2.1); expected in the official file and ignored."""
OFFICIAL_TO_OURS = {
    "modality_preprocessors.vision.cls_token": "trunks.vision.cls_token",
    "modality_preprocessors.vision.rgbt_stem.proj.1.": "trunks.vision.stem.proj.",  # index 0 is PadIm2Video
    "modality_preprocessors.vision.pos_embedding_helper.pos_embed": "trunks.vision.pos_embed",
    "modality_trunks.vision.pre_transformer_layer.0.": "trunks.vision.pre_norm.",
    "modality_trunks.vision.blocks.": "trunks.vision.blocks.",
    "modality_heads.vision.0.": "trunks.vision.head_norm.",
    "modality_heads.vision.2.": "trunks.vision.head_proj.",  # index 1 is SelectElement
    "modality_preprocessors.audio.cls_token": "trunks.audio.cls_token",
    "modality_preprocessors.audio.rgbt_stem.proj.": "trunks.audio.stem.proj.",  # the audio stem is named rgbt_stem
    "modality_preprocessors.audio.rgbt_stem.norm_layer.": "trunks.audio.stem.norm.",
    "modality_preprocessors.audio.pos_embedding_helper.pos_embed": "trunks.audio.pos_embed",
    "modality_trunks.audio.blocks.": "trunks.audio.blocks.",
    "modality_heads.audio.0.": "trunks.audio.head_norm.",
    "modality_heads.audio.2.": "trunks.audio.head_proj.",
    "modality_postprocessors.audio.1.log_logit_scale": "trunks.audio.log_logit_scale",
}
"""Official key (a full name, or a prefix ending in ".") -> our parameter name (§2.2.4). Block internals keep their
official names (`attn.in_proj_weight`, `attn.bias_k`, `norm_1`, `mlp.fc1`, ...)."""


@dataclass
class ImageBindConfig(EncoderConfig):
    """ImageBind's vision and audio trunks; the defaults are `imagebind_huge` (§2.2.1)."""

    name: str = "imagebind_huge"
    checkpoint: str | None = field(
        default=None,
        metadata={"path": "Meta's `imagebind_huge.pth` (a plain state dict of the six-trunk ImageBindModel)"},
    )
    embed_dim: int = 1024
    """Joint embedding width: every medium becomes one token of this width."""
    image_size: int = 224
    """Input resolution of the vision trunk."""
    patch_size: int = 14
    """Spatial side of a vision tubelet."""
    clip_frames: int = 2
    """Frames per vision tubelet: a video clip gives this many frames, an image is repeated to it."""
    vision_width: int = 1280
    """Vision token width."""
    vision_depth: int = 32
    """Vision blocks."""
    vision_heads: int = 16
    """Vision attention heads."""
    audio_width: int = 768
    """Audio token width."""
    audio_depth: int = 12
    """Audio blocks."""
    audio_heads: int = 12
    """Audio attention heads."""
    audio_kernel: int = 16
    """Audio patch side (over mel bins and frames)."""
    audio_stride: int = 10
    """Audio patch stride (patches overlap)."""
    audio_drop_path: float = 0.1
    """Stochastic depth of the last audio block (acts in train mode only)."""
    audio_logit_scale: float = 20.0
    """Fixed factor on the normalised audio embedding (the checkpoint stores its log)."""
    num_mel_bins: int = 128
    """Mel bins of an audio clip's fbank."""
    clip_fbank_frames: int = 204
    """Fbank frames of an audio clip (2 s at 10 ms, padded)."""
    sample_rate: int = 16000
    """Audio rate the fbank is computed at."""
    fbank_mean: float = -4.268
    """Fbank normalisation mean (ImageBind's AudioSet statistics)."""
    fbank_std: float = 9.138
    """Fbank normalisation std (divided by once, unlike BEATs' 2 * std)."""
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    """Pixel normalisation mean (CLIP's)."""
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    """Pixel normalisation std."""
    train_mode: bool = False
    """Faithful quirk (§2.2.3, §9.3): keep the encoder in train mode, as the reference's list-held encoder stayed,
    so the audio trunk's drop-path (up to 0.1) acts at inference and audio embeddings vary between calls."""

    def output_width(self) -> int:
        return self.embed_dim

    def num_tokens(self, modality: str, item_shape: tuple[int, ...]) -> int:
        """One pooled embedding per image, video clip or audio clip."""
        return 1

    def preprocessing(self, modality: str) -> dict[str, Any]:
        """The reference's processors (§3) at the resolution, clip length and statistics of this encoder."""
        pixels = {"image_size": self.image_size, "mean": self.mean, "std": self.std}
        if modality == "image":
            return {"image_processor": "imagebind_image", **pixels}
        if modality == "video":
            return {"video_processor": "imagebind_video", **pixels, "frames_per_clip": self.clip_frames}
        if modality == "audio":
            return {
                "audio_processor": "imagebind_audio",
                "sample_rate": self.sample_rate,
                "num_mel_bins": self.num_mel_bins,
                "clip_fbank_frames": self.clip_fbank_frames,
                "fbank_mean": self.fbank_mean,
                "fbank_std": self.fbank_std,
            }
        raise ValueError(f"imagebind_huge encodes images, videos and audio, not {modality!r}")


class ImageBindEncoder(nn.Module):
    """The vision and audio trunks behind the `Encoder` protocol: (N, *item) -> (N, 1, embed_dim).

    Attributes:
        trunks: `vision` and `audio`.
        width: the joint embedding width.
        train_mode: stay in train mode whatever `eval()` asks (the faithful quirk of `ImageBindConfig`).
    """

    def __init__(self, vision: Trunk, audio: Trunk, width: int, train_mode: bool = False) -> None:
        super().__init__()
        self.trunks = nn.ModuleDict({"vision": vision, "audio": audio})
        self.width = width
        self.train_mode = train_mode

    def train(self, mode: bool = True) -> ImageBindEncoder:
        return super().train(mode or self.train_mode)

    def forward(self, items: Tensor, modality: str) -> Tensor:
        """Images (N, 3, H, W), video clips (N, 3, T, H, W) or audio clips (N, 1, mel, frames) -> (N, 1, E)."""
        if modality not in TRUNK_OF_MODALITY:
            raise ValueError(f"imagebind_huge encodes {sorted(TRUNK_OF_MODALITY)}, not {modality!r}")
        return self.trunks[TRUNK_OF_MODALITY[modality]](items).unsqueeze(1)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Meta's `imagebind_huge.pth` (or a file in its layout), strictly; see `load_imagebind_checkpoint`."""
        load_imagebind_checkpoint(self, path)


@ENCODERS.register("imagebind_huge")
def build_imagebind(cfg: ImageBindConfig) -> ImageBindEncoder:
    """ImageBind's vision and audio trunks (or tiny variants) with random weights; no I/O, so it builds on meta."""
    vision = vision_trunk(
        cfg.image_size,
        cfg.patch_size,
        cfg.clip_frames,
        cfg.vision_width,
        cfg.vision_depth,
        cfg.vision_heads,
        cfg.embed_dim,
    )
    audio = audio_trunk(
        (cfg.num_mel_bins, cfg.clip_fbank_frames),
        cfg.audio_kernel,
        cfg.audio_stride,
        cfg.audio_width,
        cfg.audio_depth,
        cfg.audio_heads,
        cfg.embed_dim,
        cfg.audio_drop_path,
        cfg.audio_logit_scale,
    )
    return ImageBindEncoder(vision, audio, cfg.embed_dim, cfg.train_mode)


def rename(key: str, table: dict[str, str]) -> str | None:
    """`key` renamed by the first entry of `table` that is the key itself or a prefix of it ending in "."."""
    for old, new in table.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key.removeprefix(old)
    return None


def load_imagebind_checkpoint(encoder: ImageBindEncoder, path: str | os.PathLike) -> None:
    """Load an official-layout ImageBind state dict into `encoder`'s vision and audio trunks.

    Raises:
        ValueError: the encoder is on the meta device; the file is not a state dict; an entry is neither a used
            nor a declared unused trunk key (named); a vision/audio entry the encoder needs is missing (named);
            or a shape differs (the file was made for another size).
    """
    name = Path(path).name
    if any(parameter.is_meta for parameter in encoder.parameters()):
        raise ValueError(f"{name}: cannot load into an encoder on the meta device; materialize it first")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{name}: expected an ImageBind state dict, got {type(state_dict).__name__}")
    ours, unexpected = {}, []
    for key, tensor in state_dict.items():
        if key.startswith(UNUSED_PREFIXES):
            continue
        target = rename(key, OFFICIAL_TO_OURS)
        if target is None:
            unexpected.append(key)
        else:
            ours[target] = tensor
    missing = sorted(encoder.state_dict().keys() - ours.keys())
    unexpected += sorted(ours.keys() - encoder.state_dict().keys())
    if missing or unexpected:
        raise ValueError(
            f"{name}: not an ImageBind checkpoint for this encoder: missing {missing}, unexpected {unexpected}"
        )
    try:
        encoder.load_state_dict(ours, strict=True)
    except RuntimeError as error:  # same keys, other sizes
        raise ValueError(f"{name}: ImageBind checkpoint does not fit the encoder: {error}") from error


def official_state_dict(encoder: ImageBindEncoder) -> dict[str, Tensor]:
    """The encoder's tensors under their official names (the vision and audio part of `imagebind_huge.pth`)."""
    ours_to_official = {ours: official for official, ours in OFFICIAL_TO_OURS.items()}
    return {rename(key, ours_to_official): tensor for key, tensor in encoder.state_dict().items()}
