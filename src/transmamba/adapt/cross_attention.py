"""Plain cross-attention fusion: visual tokens attend to text tokens (the baseline to cross-Mamba).

    q = W_q v,  k = W_k text,  u = W_v text        (h heads of d_attn / h dims)
    out = W_o concat_h softmax(q_h k_h^T / sqrt(d_h) + mask) u_h      "b l d_model"

Padded text tokens get -inf. `matched_width` picks d_attn so that the module has (about) as many
parameters as a given module (a CrossMamba), for a baseline of the same size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.ops.validate import check_dim, check_tensor


class CrossAttention(nn.Module):
    """Visual tokens "b l d_model" + text tokens "b m d_text" (mask "b m") -> "b l d_model"."""

    def __init__(self, d_model: int, d_text: int, d_attn: int, num_heads: int = 4):
        super().__init__()
        if d_attn % num_heads:
            raise ValueError(f"d_attn={d_attn} must be a multiple of num_heads={num_heads}")
        self.d_model, self.d_text, self.h = d_model, d_text, num_heads
        self.q = nn.Linear(d_model, d_attn)
        self.k = nn.Linear(d_text, d_attn)
        self.v = nn.Linear(d_text, d_attn)
        self.o = nn.Linear(d_attn, d_model)

    def forward(self, v: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("v", v, 3, "(b, l, d_model)")
        check_dim("v", v, 2, self.d_model, "d_model")
        check_tensor("text", text, 3, "(b, m, d_text)")
        check_dim("text", text, 0, v.shape[0], "v batch")
        check_dim("text", text, 2, self.d_text, "d_text")
        b, l, m = v.shape[0], v.shape[1], text.shape[1]
        q = self.q(v).view(b, l, self.h, -1).transpose(1, 2)
        k = self.k(text).view(b, m, self.h, -1).transpose(1, 2)
        u = self.v(text).view(b, m, self.h, -1).transpose(1, 2)
        mask = None
        if text_mask is not None:
            if tuple(text_mask.shape) != (b, m):
                raise ValueError(f"text_mask must have shape {(b, m)}, got {tuple(text_mask.shape)}")
            mask = text_mask.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, u, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, l, -1))


def cross_attention_params(d_model: int, d_text: int, d_attn: int) -> int:
    """Parameters of CrossAttention(d_model, d_text, d_attn): d_attn (2 d_model + 2 d_text + 3) + d_model."""
    return d_attn * (2 * d_model + 2 * d_text + 3) + d_model


def matched_width(target: int, d_model: int, d_text: int, num_heads: int = 4) -> int:
    """The multiple of num_heads d_attn whose CrossAttention parameter count is closest to target."""
    per = 2 * d_model + 2 * d_text + 3
    base = max(num_heads, round((target - d_model) / per / num_heads) * num_heads)
    cands = [c for c in (base - num_heads, base, base + num_heads) if c >= num_heads]
    return min(cands, key=lambda c: abs(cross_attention_params(d_model, d_text, c) - target))
