"""Attention pooling: a readout of tokens that keeps the positions its scores pick (a mean keeps none).

    s_{h,l} = w_h . u_l / sqrt(d)          (H learned queries w_h, "h d")
    a_{h,l} = softmax_l(s_{h,l})           (over the token axis)
    z       = concat_h sum_l a_{h,l} u_l   "b l d" -> "b (h d)"

With w = 0 (the initialisation) every head is the mean of the tokens, so the pool starts where a
mean readout is. The scores see only u: after a text-conditioned fusion (cross-Mamba, cross-
attention) the question shifts them, so it steers which tokens are read; on plain visual tokens the
pool is the same for every question, and z stays a pooled image vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transmamba.ops.validate import check_dim, check_tensor


def attention_pool_ref(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Reference (a loop over heads and batch): u "b l d", w "h d" -> "b (h d)"."""
    outs = []
    for i in range(u.shape[0]):
        heads = []
        for h in range(w.shape[0]):
            a = torch.softmax(u[i] @ w[h] / math.sqrt(u.shape[-1]), dim=0)
            heads.append((a[:, None] * u[i]).sum(0))
        outs.append(torch.cat(heads))
    return torch.stack(outs)


def attention_pool(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """u "b l d", w "h d" -> "b (h d)" (see the module docstring)."""
    a = torch.einsum("bld,hd->bhl", u, w / math.sqrt(u.shape[-1])).softmax(-1)
    return torch.einsum("bhl,bld->bhd", a, u).flatten(1)


class AttentionPool(nn.Module):
    """H learned-query softmax pools over the token axis, concatenated: "b l d" -> "b (h d)"."""

    def __init__(self, d_model: int, heads: int = 4):
        super().__init__()
        if heads < 1:
            raise ValueError(f"attention pool heads must be >= 1, got {heads}")
        self.d_model, self.heads = d_model, heads
        self.w = nn.Parameter(torch.zeros(heads, d_model))

    @property
    def d_out(self) -> int:
        return self.heads * self.d_model

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_tensor("u", u, 3, "(b, l, d_model)")
        check_dim("u", u, 2, self.d_model, "d_model")
        return attention_pool(u, self.w)
