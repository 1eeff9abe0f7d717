"""Gated feed-forward block with HF Llama parameter names (gate_proj, up_proj, down_proj).

act "silu": SwiGLU (Llama); "gelu_tanh": GeGLU with the tanh GELU (HF gelu_pytorch_tanh, Gemma);
"gelu": GeGLU with the exact GELU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


class SwiGLU(nn.Module):
    """y = down_proj(act(gate_proj(x)) * up_proj(x));  x "... d_model" -> "... d_model"."""

    def __init__(self, d_model: int, d_hidden: int, bias: bool = False, device=None, dtype=None, act: str = "silu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.act = act
        self._act = ACTIVATIONS[act]
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(d_model, d_hidden, **kw)
        self.up_proj = nn.Linear(d_model, d_hidden, **kw)
        self.down_proj = nn.Linear(d_hidden, d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.gate_proj.in_features:
            raise ValueError(f"x must have shape (..., {self.gate_proj.in_features}), "
                             f"got {tuple(x.shape)}")
        return self.down_proj(self._act(self.gate_proj(x)) * self.up_proj(x))
