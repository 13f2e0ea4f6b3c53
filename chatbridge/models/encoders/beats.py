"""Audio encoder: BEATs followed by `ln_audio`, plus official-checkpoint loading.

See docs/reference/chatbridge.md §1.5, §1.6 and §3.4. BEATs itself is hand-written in `beats_network.py` because no
library ships it. An official BEATs checkpoint is a dict
`{"cfg": <hyper-parameters>, "model": <state dict>}`; its `cfg` is the authority on the architecture, because
`deep_norm` has no parameters and a wrong value would load strictly and still change every output. Hence two ways
to build: `build_beats` (registered as "beats") from `BeatsConfig`, and `build_beats_from_checkpoint_cfg`
from the checkpoint's own `cfg`; `load_beats_checkpoint` then refuses a checkpoint whose `cfg` disagrees with the
built network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from chatbridge.config import EncoderConfig
from chatbridge.errors import UserError, load_torch_file
from chatbridge.models.encoders.beats_network import BEATs
from chatbridge.models.layers import Fp32LayerNorm
from chatbridge.registry import ENCODERS


@dataclass
class BeatsConfig(EncoderConfig):
    """BEATs + `ln_audio`; defaults are BEATs iter3+ AS2M. A checkpoint's own `cfg` must agree with them."""

    name: str = "beats"
    checkpoint: str | None = field(
        default=None, metadata={"path": "an official BEATs checkpoint `.pt` with keys `cfg` and `model`"}
    )
    num_mel_bins: int = 64
    """Fbank bins fed to BEATs: 64 for the released ChatBridge weights (BEATs itself was pre-trained on 128)."""
    sample_rate: int = 16000
    """Audio rate the fbank is computed at."""
    fbank_mean: float = 15.41663
    """Fbank normalisation mean (BEATs' AudioSet statistics)."""
    fbank_std: float = 6.55582
    """Fbank normalisation std (divided by 2 * std, as BEATs does)."""
    patch_size: int = 16
    """Conv patch size over (time, frequency)."""
    embed_dim: int = 512
    """Patch-embedding width before `post_extract_proj`."""
    width: int = 768
    """Encoder width (D_a)."""
    depth: int = 12
    """Transformer layers."""
    num_heads: int = 12
    """Attention heads."""
    ffn_dim: int = 3072
    """Feed-forward width."""
    conv_pos: int = 128
    """Kernel of the convolutional position embedding."""
    conv_pos_groups: int = 16
    """Groups of the convolutional position embedding."""
    num_buckets: int = 320
    """Relative-position buckets."""
    max_distance: int = 800
    """Relative-position maximum distance."""
    deep_norm: bool = True
    """Residual scaled by (2 * depth) ** 0.25; has no parameters, so it must come from the checkpoint cfg."""
    layer_norm_first: bool = False
    """Pre-LN (True) or post-LN (False)."""
    gru_rel_pos: bool = True
    """Gated relative position bias."""
    ln_audio_eps: float = 1e-5
    """Eps of `ln_audio`."""

    def output_width(self) -> int:
        return self.width

    def num_tokens(self, modality: str, item_shape: tuple[int, ...]) -> int:
        """Patches of one (frames, mel bins) fbank segment: 256 for (1024, 64) with 16 x 16 patches."""
        return (item_shape[-2] // self.patch_size) * (item_shape[-1] // self.patch_size)

    def preprocessing(self, modality: str) -> dict[str, Any]:
        """Kaldi fbank segments at the rate, bins and statistics BEATs was trained with."""
        if modality != "audio":
            raise UserError(f"beats encodes audio, not {modality!r}")
        return {
            "audio_processor": "beats_fbank",
            "sample_rate": self.sample_rate,
            "num_mel_bins": self.num_mel_bins,
            "fbank_mean": self.fbank_mean,
            "fbank_std": self.fbank_std,
        }


# Official `cfg` key -> `BEATs` constructor argument.
_CFG_TO_KWARG = {
    "input_patch_size": "patch_size",
    "embed_dim": "embed_dim",
    "encoder_embed_dim": "width",
    "encoder_layers": "depth",
    "encoder_attention_heads": "num_heads",
    "encoder_ffn_embed_dim": "ffn_dim",
    "conv_pos": "conv_pos",
    "conv_pos_groups": "conv_pos_groups",
    "relative_position_embedding": "relative_position_embedding",
    "num_buckets": "num_buckets",
    "max_distance": "max_distance",
    "gru_rel_pos": "gru_rel_pos",
    "deep_norm": "deep_norm",
    "layer_norm_first": "layer_norm_first",
    "conv_bias": "conv_bias",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "dropout_input": "dropout_input",
    "encoder_layerdrop": "layerdrop",
}
# Upstream `BEATsConfig` defaults of keys that only act in training mode, for cfgs that omit them.
_TRAINING_DEFAULTS = {
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "dropout_input": 0.0,
    "encoder_layerdrop": 0.0,
}
# Keys accepted and dropped: the gradient multiplier only scales gradients into the layers (no forward effect),
# and the predictor settings matter only for fine-tuned classifiers, which `finetuned_model` rejects.
_IGNORED_KEYS = {"layer_wise_gradient_decay_ratio", "predictor_dropout", "predictor_class"}
# Keys whose only supported value is upstream's pre-trained-encoder setting.
_FIXED_VALUES = {"activation_fn": "gelu", "finetuned_model": False}
_WEIGHT_NORM_OLD_TO_NEW = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


class BeatsEncoder(nn.Module):
    """BEATs followed by ChatBridge's `ln_audio`.

    `ln_audio` is freshly initialized in the reference (no checkpoint provides it) and frozen, so with the released
    weights it is a parameter-free LayerNorm; it is kept as a module so ChatBridge checkpoints load by name.

    Attributes:
        backbone: the BEATs network.
        ln_audio: LayerNorm over the BEATs tokens, computed in fp32.
        width: token width D_a.
    """

    def __init__(self, backbone: BEATs, ln_audio_eps: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.width: int = backbone.width
        self.ln_audio = Fp32LayerNorm(self.width, eps=ln_audio_eps)

    def forward(self, fbank: Tensor, modality: str = "audio") -> Tensor:
        """Encode normalized fbank segments (N, T, F) into (N, T/p * F/p, width) features."""
        # 1. BEATs: patchify (time-major tokens), project, transformer.
        tokens = self.backbone(fbank)  # (N, T/p * F/p, D_a)
        # 2. ChatBridge's ln_audio.
        return self.ln_audio(tokens)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """An official BEATs `.pt` into the backbone (`ln_audio` keeps its init, as in the reference)."""
        load_beats_checkpoint(self, path)


@ENCODERS.register("beats")
def build_beats(cfg: BeatsConfig) -> BeatsEncoder:
    """Build BEATs + `ln_audio` with random weights from the dataclass; no file I/O, so it builds on meta too.

    Relative positions are always on and the patch conv has no bias, as in every released BEATs checkpoint;
    dropouts are 0 because the tower runs frozen. For another checkpoint use `build_beats_from_checkpoint_cfg`.
    """
    backbone = BEATs(
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        width=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        ffn_dim=cfg.ffn_dim,
        conv_pos=cfg.conv_pos,
        conv_pos_groups=cfg.conv_pos_groups,
        relative_position_embedding=True,
        num_buckets=cfg.num_buckets,
        max_distance=cfg.max_distance,
        gru_rel_pos=cfg.gru_rel_pos,
        deep_norm=cfg.deep_norm,
        layer_norm_first=cfg.layer_norm_first,
        conv_bias=False,
    )
    return BeatsEncoder(backbone, cfg.ln_audio_eps)


def _read_official_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    checkpoint = load_torch_file(path, "model.encoders.<audio>.checkpoint (BEATs)")
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(f"{Path(path).name}: not an official BEATs checkpoint (need keys 'cfg' and 'model'): {found}")
    return checkpoint


def read_beats_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """The `cfg` dict of an official BEATs checkpoint (the file is read in full: torch.load cannot skip tensors)."""
    return dict(_read_official_checkpoint(path)["cfg"])


def beats_kwargs_from_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """Map an official BEATs `cfg` onto `BEATs` constructor arguments.

    Architecture keys are required (upstream would silently fall back to defaults such as `deep_norm=False`);
    missing dropout/layer-drop keys take upstream's defaults since they act only in training mode.

    Raises:
        ValueError: naming unknown keys, missing architecture keys, or settings this port does not implement.
    """
    known = _CFG_TO_KWARG.keys() | _IGNORED_KEYS | _FIXED_VALUES.keys()
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UserError(f"unknown BEATs cfg keys {unknown}; known: {sorted(known)}")
    missing = sorted(_CFG_TO_KWARG.keys() - _TRAINING_DEFAULTS.keys() - cfg.keys())
    if missing:
        raise UserError(f"BEATs cfg lacks architecture keys {missing}")
    unsupported = {key: cfg[key] for key, value in _FIXED_VALUES.items() if cfg.get(key, value) != value}
    if unsupported:
        raise UserError(f"unsupported BEATs settings {unsupported}; supported: {_FIXED_VALUES}")
    merged = {**_TRAINING_DEFAULTS, **cfg}
    return {kwarg: merged[key] for key, kwarg in _CFG_TO_KWARG.items()}


def _rename_suffixes(state_dict: dict[str, Tensor], renames: dict[str, str]) -> dict[str, Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        renamed[key] = value
    return renamed


def old_to_new_weight_norm_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """`nn.utils.weight_norm` names (`*.weight_g`, `*.weight_v`) -> parametrization names (`original0/1`).

    Works under any prefix (e.g. `audio_encoder.` in a ChatBridge checkpoint); other keys pass unchanged.
    """
    return _rename_suffixes(state_dict, _WEIGHT_NORM_OLD_TO_NEW)


def new_to_old_weight_norm_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Parametrization names -> `nn.utils.weight_norm` names, for writing checkpoints in the official layout."""
    return _rename_suffixes(state_dict, {new: old for old, new in _WEIGHT_NORM_OLD_TO_NEW.items()})


def build_beats_from_checkpoint_cfg(
    path: str | os.PathLike, *, ln_audio_eps: float = BeatsConfig.ln_audio_eps
) -> BeatsEncoder:
    """Build (random weights) the encoder that an official checkpoint's `cfg` describes; load it afterwards.

    This is how real checkpoints are built: the checkpoint's `cfg` wins over `BeatsConfig`'s defaults.
    """
    return BeatsEncoder(BEATs(**beats_kwargs_from_cfg(read_beats_cfg(path))), ln_audio_eps)


def _check_architecture(backbone: BEATs, cfg: dict[str, Any], name: str) -> None:
    built = backbone.architecture()
    expected = beats_kwargs_from_cfg(cfg)
    differing = [
        f"{key}: checkpoint {expected[key]!r} vs built {built[key]!r}" for key in built if expected[key] != built[key]
    ]
    if differing:
        raise UserError(
            f"{name}: BEATs cfg disagrees with the built encoder ({'; '.join(differing)}); "
            "set the matching model.encoders.<key>.* keys (or build with build_beats_from_checkpoint_cfg)"
        )


def load_beats_checkpoint(encoder: BeatsEncoder, path: str | os.PathLike) -> None:
    """Load an official BEATs checkpoint into `encoder.backbone`, strictly; `ln_audio` keeps its init.

    Old weight-norm names are remapped. The encoder must be materialized (not on the meta device), since copying
    into meta tensors would silently load nothing.

    Raises:
        ValueError: the file is not in the official format, its `cfg` differs from the built architecture, or
            its keys differ from the encoder's (all naming the file).
    """
    name = Path(path).name
    backbone = encoder.backbone
    if any(parameter.is_meta for parameter in backbone.parameters()):
        raise UserError(f"{name}: cannot load into an encoder on the meta device; materialize it first")
    checkpoint = _read_official_checkpoint(path)
    _check_architecture(backbone, checkpoint["cfg"], name)
    state_dict = old_to_new_weight_norm_keys(checkpoint["model"])
    expected = backbone.state_dict().keys()
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise UserError(f"{name}: BEATs state dict mismatch; missing keys {missing}; unexpected keys {unexpected}")
    # The shared relative-position table is repeated under every layer name; as upstream, the last copy wins.
    backbone.load_state_dict(state_dict, strict=True)
