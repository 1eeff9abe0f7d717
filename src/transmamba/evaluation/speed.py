"""Decoding speed and cache memory: ms per generated token at a given context, and the bytes the
decoding caches hold there, for our LMs and for Hugging Face teachers.

- `decode_speed(model, context, n_tokens)`: a `transmamba.models.lm.LM` (any architecture).
- `teacher_decode_speed(teacher, context, n_tokens)`: a Hugging Face causal LM and its KV cache.
- `time_ms`: median wall time of a call; `cache_nbytes`, `teacher_kv_nbytes`: cache sizes.
- `fill_caches`: TransMamba-Switch caches sized as after `context` tokens, without a prefill.

The context is prefilled for real by default. With `synthetic=True` the caches are filled to the
context's size directly (random contents): the cost of one decoding step depends on the caches'
sizes, not on what they hold, and a long teacher prefill can take minutes on a CPU. Used by
`transmamba convert`'s report and by the `bench lm` / `bench convert` benchmarks.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch

from transmamba.models.hf_llama import teacher_spec
from transmamba.modules.cache import SwitchCache


def time_ms(fn: Callable[[], object], reps: int = 5, warmup: int = 1, max_s: float = 20.0) -> float:
    """Median wall time of `fn` in milliseconds (stops early once `max_s` is spent)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_s:
            break
    return statistics.median(times)


def cache_nbytes(caches) -> int:
    """Bytes of every tensor held by the layer caches (dataclasses of tensors)."""
    total = 0
    for c in caches:
        if not dataclasses.is_dataclass(c):
            raise TypeError(f"caches must hold dataclass caches (from allocate_caches), got {type(c).__name__}")
        for f in dataclasses.fields(c):
            t = getattr(c, f.name)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def fill_caches(model, caches, context: int, batch: int = 1) -> None:
    """Make the caches of a TransMamba-Switch LM look as if `context` tokens had been consumed
    (by `batch` rows): layers with TransPoint <= context get an SSM state, the others `context` KV entries.
    Contents are random; sizes and positions are exact."""
    for block, c in zip(model.blocks, caches):
        if not isinstance(c, SwitchCache):
            raise TypeError(f"fill_caches needs TransMamba-Switch caches, got {type(c).__name__} "
                            f"(layer kind {getattr(block, 'kind', '?')!r}); use synthetic=False")
        mix = block.mixer
        if context >= c.transpoint:
            c.ssm_state = torch.randn(batch, mix.h, mix.p, mix.n)
            c.k = c.v = c.dt = None
        else:
            c.k, c.v = torch.randn(batch, context, mix.g, mix.n), torch.randn(batch, context, mix.g, mix.p)
            c.dt = torch.rand(batch, context, mix.h)
        c.pos = context


@torch.no_grad()
def decode_speed(model, context: int, n_tokens: int, *, synthetic: bool = False, warmup: int = 2,
                 max_s: float = 30.0, batch: int = 1) -> tuple[float, float]:
    """(ms per decoding step, MiB held by the caches) of an LM at a context of `context` tokens,
    `batch` rows (one step decodes one token per row). The context is prefilled, or with `synthetic` (TransMamba-Switch LMs only) the caches
    are filled to its size (`fill_caches`)."""
    idx = torch.randint(0, model.cfg.vocab_size, (batch, context))
    caches = model.allocate_caches(batch, max_len=context + n_tokens + 2)
    if synthetic:
        fill_caches(model, caches, context, batch)
    else:
        model(idx, caches=caches)
    tok = idx[:, -1]
    ms = time_ms(lambda: model.step(tok, caches), reps=n_tokens, warmup=warmup, max_s=max_s)
    return ms, cache_nbytes(caches) / 2**20


def teacher_kv_nbytes(past) -> int:
    """Bytes of the keys and values in a Hugging Face cache (`DynamicCache`-like, with `.layers`)."""
    total = 0
    for layer in getattr(past, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def teacher_decode_speed(teacher, context: int, n_tokens: int, *, synthetic: bool = False,
                         warmup: int = 1, max_s: float = 60.0, batch: int = 1) -> tuple[float, float]:
    """(ms per decoding step, MiB of its KV cache) of a Hugging Face causal LM at a context of
    `context` tokens, `batch` rows. The context is prefilled, or with `synthetic` the KV cache is filled
    with random keys/values of the context's size (`teacher_spec`: layers, kv heads, head dim)."""
    idx = torch.randint(0, teacher.config.vocab_size, (batch, context))
    if synthetic:
        from transformers import DynamicCache

        spec, past = teacher_spec(teacher), DynamicCache()
        for i in range(spec["n_layers"]):
            kv = torch.randn(2, batch, spec["n_kv_heads"], context, spec["head_dim"])
            past.update(kv[0], kv[1], i)
    else:
        out = teacher(idx, use_cache=True)
        past = getattr(out, "cache", None) or out.past_key_values
    tok = idx[:, -1:]
    state = {"past": past, "pos": context}

    def one():
        o = teacher(tok, cache=state["past"], use_cache=True, position_ids=torch.full((batch, 1), state["pos"]))
        state["past"], state["pos"] = getattr(o, "cache", None) or o.past_key_values, state["pos"] + 1

    ms = time_ms(one, reps=n_tokens, warmup=warmup, max_s=max_s)
    return ms, teacher_kv_nbytes(state["past"]) / 2**20
