"""Contrastive (InfoNCE) losses for text-visual retrieval, with a learned temperature.

With unit embeddings t_i, v_j and a learned scale s = exp(log_s) (log_s clamped to <= log 100),
logits l_ij = s t_i . v_j and

    L = ( CE_rows(l, diag) + CE_cols(l, diag) ) / 2
      = -1/(2n) sum_i [ log softmax_j(l_ij)|_{j=i} + log softmax_j(l_ji)|_{j=i} ]

`same[i, j]` (optional) marks pairs other than (i, i) that carry the SAME caption (a batch of
clips repeats captions): they are removed from the softmax denominators, not counted as negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LogitScale(nn.Module):
    """s = exp(log_s), log_s learned, starting at log(1 / init_temperature), clamped to <= log(max_scale)."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()


def _mask_same(logits: torch.Tensor, same: torch.Tensor | None) -> torch.Tensor:
    if same is None:
        return logits
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return logits.masked_fill(same.bool() & ~eye, float("-inf"))


def info_nce(logits: torch.Tensor, same: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, L_t2v, L_v2t) for square logits "n n" (rows = texts, columns = visuals)."""
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be square (n, n), got {tuple(logits.shape)}")
    lg = _mask_same(logits.float(), same)
    target = torch.arange(lg.shape[0], device=lg.device)
    t2v = F.cross_entropy(lg, target)
    v2t = F.cross_entropy(lg.transpose(0, 1), target)
    return (t2v + v2t) / 2, t2v, v2t


def info_nce_ref(logits: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Slow reference of info_nce's L: explicit loops over rows and columns."""
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        for rows in (logits[i], logits[:, i]):
            keep = [j for j in range(n) if j == i or same is None or not bool(same[i, j] if rows is logits[i]
                                                                              else same[j, i])]
            z = torch.stack([rows[j] for j in keep]).double()
            total = total - (rows[i].double() - torch.logsumexp(z, 0))
    return total / (2 * n)


def candidate_nce(scores: torch.Tensor) -> torch.Tensor:
    """-mean_i log softmax(scores_i)[0]: InfoNCE over "b K" candidate scores, the positive first."""
    return F.cross_entropy(scores.float(), torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
