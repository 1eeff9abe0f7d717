"""Prefill and decode speed of any transformers causal LM, ours or a teacher, by one code path.

prefill tok/s: one forward of a context of `prefill_len` tokens (use_cache=True); decode ms/token
at a context of C tokens: the context prefilled, then the mean time of one cached one-token
forward; cache MB after the context (`TransMambaCache.nbytes()` or a DynamicCache's keys/values).
"""

from __future__ import annotations

import time

import torch

from transmamba.evaluation.speed import teacher_kv_nbytes


def cache_mb(cache) -> float:
    n = cache.nbytes() if hasattr(cache, "nbytes") else teacher_kv_nbytes(cache)
    return n / 2**20


@torch.no_grad()
def hf_speed(model, contexts, *, prefill_len: int, n_tokens: int = 8, max_s: float = 60.0) -> dict:
    """{"prefill_tok_s", "decode": {C: {"ms_per_token", "cache_mb"}}} of `model` (batch 1)."""
    model.eval()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (1, prefill_len), generator=g)
    t0 = time.perf_counter()
    model(x, use_cache=True)
    prefill = prefill_len / max(time.perf_counter() - t0, 1e-9)
    decode = {}
    for C in contexts:
        ctx = torch.randint(0, V, (1, int(C)), generator=g)
        out = model(ctx, use_cache=True)
        cache, tok = out.cache, ctx[:, -1:]
        times, start = [], time.perf_counter()
        for i in range(n_tokens):
            t = time.perf_counter()
            out = model(tok, cache=cache, use_cache=True, position_ids=torch.tensor([[int(C) + i]]))
            cache = out.cache
            times.append(time.perf_counter() - t)
            if time.perf_counter() - start > max_s:
                break
        decode[int(C)] = {"ms_per_token": 1000 * sum(times[1:] or times) / len(times[1:] or times),
                          "cache_mb": cache_mb(cache)}
    return {"prefill_tok_s": prefill, "decode": decode}
