"""Prefill and decode speed of any transformers causal LM, ours or a teacher, by one code path.

prefill tok/s at L: one forward of L tokens (use_cache=True). decode ms/token at a context of C
tokens: the mean time of one cached one-token forward after C tokens; cache MB after the context
(`TransMambaCache.nbytes()` or a DynamicCache's keys/values).

With `synthetic=True` the decode caches are filled to C tokens' size with random contents
(`synthetic_cache`) instead of by a prefill: one decoding step costs what the caches' sizes make
it cost, not what they hold, and a 16k-token prefill of the teacher takes minutes on a CPU. A model
whose cache cannot be filled exactly so (not ours, not `kv_fillable`) is prefilled for real; each decode row
says which (`synthetic_cache`).
"""

from __future__ import annotations

import time

import torch

from transmamba.evaluation.speed import fill_caches, kv_fillable, random_kv_cache, teacher_kv_nbytes


def cache_mb(cache) -> float:
    n = cache.nbytes() if hasattr(cache, "nbytes") else teacher_kv_nbytes(cache)
    return n / 2**20


def synthetic_cache(model, context: int, max_new: int):
    """A decoding cache of `model` sized as after `context` tokens (random contents), or None when
    this model's cache cannot be filled without a prefill."""
    from transmamba.hf.cache import TransMambaCache
    from transmamba.hf.modeling_transmamba import TransMambaForCausalLM

    if isinstance(model, TransMambaForCausalLM):
        lm = model.model
        cache = TransMambaCache(lm, max_len=context + max_new + 2)
        fill_caches(lm, cache.ensure(1, lm.embed.weight.device, lm.embed.weight.dtype), context)
        cache.seen = context
        return cache
    if kv_fillable(model.config, context):
        return random_kv_cache(model.config, context)
    return None


@torch.no_grad()
def hf_speed(model, contexts, *, prefill_lengths, n_tokens: int = 8, synthetic: bool = False,
             max_s: float = 60.0) -> dict:
    """{"prefill": {L: tok/s}, "decode": {C: {"ms_per_token", "cache_mb", "synthetic_cache"}}}
    of `model` at batch 1."""
    model.eval()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prefill = {}
    for L in prefill_lengths:
        x = torch.randint(0, V, (1, int(L)), generator=g)
        t0 = time.perf_counter()
        model(x, use_cache=True)
        prefill[int(L)] = int(L) / max(time.perf_counter() - t0, 1e-9)
    decode = {}
    for C in contexts:
        C = int(C)
        cache = synthetic_cache(model, C, n_tokens) if synthetic else None
        filled = cache is not None
        if cache is None:
            cache = model(torch.randint(0, V, (1, C), generator=g), use_cache=True).cache
        tok = torch.randint(0, V, (1, 1), generator=g)
        times, start = [], time.perf_counter()
        for i in range(n_tokens):
            t = time.perf_counter()
            out = model(tok, cache=cache, use_cache=True, position_ids=torch.tensor([[C + i]]))
            cache = out.cache
            times.append(time.perf_counter() - t)
            if time.perf_counter() - start > max_s:
                break
        kept = times[1:] or times  # the first step warms up
        decode[C] = {"ms_per_token": 1000 * sum(kept) / len(kept), "cache_mb": cache_mb(cache),
                     "synthetic_cache": filled}
    return {"prefill": prefill, "decode": decode}
