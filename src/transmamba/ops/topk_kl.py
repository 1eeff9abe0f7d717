"""The top-k distillation KL on full logits: KL(teacher || student) over the teacher's top k tokens.

`ops.head_loss.head_ce_kl` computes the same KL from the features and the head weight without the full
logits; `teachers.cache` stores the teacher's top-k log-probabilities it reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.validate import check_dim, check_tensor


def _check_kl_args(student_logits, topk_idx, topk_logp, T):
    check_tensor("student_logits", student_logits, 3, "(b, l, v)")
    check_tensor("topk_logp", topk_logp, 3, "(b, l, k)")
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 3 or topk_idx.is_floating_point():
        raise ValueError(f"topk_idx must be an integer tensor of shape (b, l, k), got "
                         f"{getattr(topk_idx, 'dtype', type(topk_idx).__name__)} of shape "
                         f"{tuple(getattr(topk_idx, 'shape', ()))}")
    check_dim("topk_idx", topk_idx, 0, student_logits.shape[0], "student_logits (b, l, v)")
    check_dim("topk_idx", topk_idx, 1, student_logits.shape[1], "student_logits (b, l, v)")
    for dim in range(3):
        check_dim("topk_logp", topk_logp, dim, topk_idx.shape[dim], "topk_idx (b, l, k)")
    if topk_idx.numel() and (topk_idx.min() < 0 or topk_idx.max() >= student_logits.shape[-1]):
        raise ValueError(f"topk_idx holds ids outside [0, v={student_logits.shape[-1]})")
    if not T > 0:
        raise ValueError(f"T must be > 0, got {T}")


def topk_kl(student_logits: torch.Tensor, topk_idx: torch.Tensor, topk_logp: torch.Tensor,
            T: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-k tokens, both renormalized over those k.

        p_j = softmax_j(topk_logp_j / T),   q_j = softmax_j(student_logits[topk_idx_j] / T)
        KL  = sum_j p_j (log p_j - log q_j)                       (j = 1..k, per position)

    student_logits "(b, l, v)", topk_idx "(b, l, k)", topk_logp "(b, l, k)". Zero iff the student's
    logits on the k tokens equal the teacher's up to a constant. reduction "mean" (over b l),
    "sum" or "none" -> "(b, l)". Not multiplied by T^2 (do that in the loss if wanted).
    """
    _check_kl_args(student_logits, topk_idx, topk_logp, T)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    log_q = F.log_softmax(student_logits.gather(-1, topk_idx.long()) / T, dim=-1)
    log_p = F.log_softmax(topk_logp.to(log_q.dtype) / T, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean() if reduction == "mean" else kl.sum() if reduction == "sum" else kl


def topk_kl_ref(student_logits: torch.Tensor, topk_idx: torch.Tensor, topk_logp: torch.Tensor,
                T: float = 1.0) -> torch.Tensor:
    """Slow twin of `topk_kl` (reduction "mean"): one position at a time, softmax written out."""
    _check_kl_args(student_logits, topk_idx, topk_logp, T)
    b, l, _ = topk_idx.shape
    total = student_logits.new_zeros(())
    for bi in range(b):
        for t in range(l):
            s = torch.stack([student_logits[bi, t, int(v)] for v in topk_idx[bi, t]]) / T
            a = topk_logp[bi, t].to(s.dtype) / T
            p = torch.exp(a - a.max()) / torch.exp(a - a.max()).sum()
            q = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            total = total + (p * (torch.log(p) - torch.log(q))).sum()
    return total / (b * l)
