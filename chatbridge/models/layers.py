"""Small layers (and dtype names) shared by several model parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The config's precision names (`chatbridge.config.Precision`) as torch dtypes."""


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype, like LAVIS's `LayerNorm` subclass.

    The weights are upcast too, so the module keeps working after its tower is cast to bf16/fp16
    (`ln_vision`, `ln_audio`).
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
