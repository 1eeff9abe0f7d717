"""Perplexity on held-out text by context length and by position bucket.

For each length L, windows of L + 1 tokens of the held-out stream; each token's NLL is filed under
the bucket of its position (e.g. [0, 64), [64, 256), [256, 1024), ...): ppl[L][bucket] =
exp(mean NLL). A model that uses its long context well keeps the late buckets low. Any model
given as `logits_fn(x "b l") -> "b l V"` (ours and transformers teachers alike).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_EDGES = (0, 64, 256, 1024, 4096, 16384)


def bucket_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


@torch.no_grad()
def bucketed_perplexity(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: np.ndarray, lengths, *,
                        n_windows: int = 2, edges=DEFAULT_EDGES) -> dict:
    """{L: {"ppl": all positions, "buckets": {"lo-hi": ppl}}} for each L in lengths.

    ValueError when the stream is shorter than one window of the longest length."""
    out = {}
    for L in lengths:
        L = int(L)
        if L < 2:
            raise ValueError(f"lengths must be >= 2, got {L}")
        if len(ids) < L + 1:
            raise ValueError(f"the held-out stream has {len(ids)} tokens, fewer than one window of {L + 1}")
        n = min(n_windows, len(ids) // (L + 1))
        nll = torch.zeros(L, dtype=torch.float64)
        for w in range(n):
            chunk = torch.as_tensor(np.asarray(ids[w * (L + 1):(w + 1) * (L + 1)], dtype=np.int64))[None]
            logits = logits_fn(chunk[:, :-1])
            nll += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="none").double()
        nll /= n
        buckets = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            if lo >= L:
                break
            buckets[bucket_name(lo, min(hi, L))] = math.exp(min(float(nll[lo:hi].mean()), 50.0))
        out[L] = {"ppl": math.exp(min(float(nll.mean()), 50.0)), "buckets": buckets, "windows": n}
    return out
