"""Softmax attention of ONE query per row over a key/value cache: the decoding step's attention.

    o_h = softmax(scale * q_h K_g^T) V_g          (head h reads kv head g = h // (h / kv))

Shapes (einops): q "b h 1 d", k "b kv T d", v "b kv T e" (any strides: a view of a "b T kv d"
cache is fine), scale a float -> o "b h 1 e". No mask: every cached key is visible (causal
decoding at the newest position). `decode_attention` is two batched matmuls with the query heads of
a kv head stacked as rows, which on CPU is ~1.5x faster at 4k keys than the flash kernel that
`F.scaled_dot_product_attention` picks for a length-1 query; `decode_attention_ref` is that SDPA
call. float32/float64 only (the caller keeps SDPA for half precision, whose kernel accumulates the
scores in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.validate import check_divisible, check_tensor

__all__ = ["decode_attention", "decode_attention_ref", "DECODE_DTYPES"]

DECODE_DTYPES = (torch.float32, torch.float64)  # the dtypes `decode_attention` is used for


def _check(q, k, v) -> tuple[int, int, int]:
    check_tensor("q", q, 4, "(b, h, 1, d)")
    check_tensor("k", k, 4, "(b, kv, T, d)")
    check_tensor("v", v, 4, "(b, kv, T, e)")
    b, h, s, d = q.shape
    if s != 1:
        raise ValueError(f"q must hold one query per row (b, h, 1, d), got {tuple(q.shape)}")
    if k.shape[0] != b or k.shape[3] != d or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (b={b}, kv, T, d={d}) and "
                         f"(b, kv, T, e) with the same b, kv, T")
    check_divisible("query heads h (q.shape[1])", h, "kv heads (k.shape[1])", k.shape[1])
    return b, h, k.shape[1]


def decode_attention(q, k, v, scale: float):
    """q "b h 1 d", k "b kv T d", v "b kv T e" -> o "b h 1 e" (see the module docstring)."""
    b, h, kv = _check(q, k, v)
    qg = q.reshape(b, kv, h // kv, q.shape[-1])  # "b (kv r) 1 d -> b kv r d"
    probs = torch.softmax(torch.matmul(qg, k.transpose(-1, -2)) * scale, dim=-1)  # b kv r T
    return torch.matmul(probs, v).reshape(b, h, 1, v.shape[-1])


def decode_attention_ref(q, k, v, scale: float):
    """Reference of `decode_attention`: `F.scaled_dot_product_attention` with grouped kv heads."""
    b, h, kv = _check(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=kv != h)
