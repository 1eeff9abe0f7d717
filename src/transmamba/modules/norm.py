"""Norm modules on the ops in `transmamba.ops.norm` (parameter name `weight`, as in HF)."""

from __future__ import annotations

import torch
from torch import nn

from transmamba.ops.norm import gated_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim "... d"."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Mamba-2 gated RMSNorm per group: y = rmsnorm_g(x * silu(z)) * weight (norm_before_gate=False).

    Same parameter (`weight`, "d") and math as HF `MambaRMSNormGated(d, group_size, eps)`.
    """

    def __init__(self, d: int, group_size: int | None = None, eps: float = 1e-5,
                 norm_before_gate: bool = False, device=None, dtype=None):
        super().__init__()
        self.group_size = d if group_size is None else group_size
        if d % self.group_size:
            raise ValueError(f"d={d} must be divisible by group_size={self.group_size}")
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(x, z, self.weight, group_size=self.group_size, eps=self.eps,
                              norm_before_gate=self.norm_before_gate)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}, "
                f"norm_before_gate={self.norm_before_gate}")
