"""SwiGLU feed-forward block with HF Llama parameter names (gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """y = down_proj(silu(gate_proj(x)) * up_proj(x));  x "... d_model" -> "... d_model"."""

    def __init__(self, d_model: int, d_hidden: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(d_model, d_hidden, **kw)
        self.up_proj = nn.Linear(d_model, d_hidden, **kw)
        self.down_proj = nn.Linear(d_hidden, d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.gate_proj.in_features:
            raise ValueError(f"x must have shape (..., {self.gate_proj.in_features}), "
                             f"got {tuple(x.shape)}")
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
