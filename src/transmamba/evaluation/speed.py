"""Decoding speed and cache memory: ms per generated token at a given context, and the bytes the
decoding caches hold there, for our LMs and for Hugging Face teachers.

- `decode_speed(model, context, n_tokens)`: a `transmamba.models.lm.LM` (any architecture).
- `teacher_decode_speed(teacher, context, n_tokens)`: a Hugging Face causal LM and its KV cache.
- `time_ms`: median wall time of a call; `alternating_medians`: several measurements taken in
  turn, round after round, so that a drift of a shared machine's speed hits them alike;
  `cache_nbytes`, `teacher_kv_nbytes`: cache sizes.
- `fill_caches`: an LM's caches sized as after `context` tokens, without a prefill;
  `random_kv_cache`: the same for a Hugging Face teacher's `DynamicCache`.

The context is prefilled for real by default. With `synthetic=True` the caches are filled to the
context's size directly (random contents): the cost of one decoding step depends on the caches'
sizes, not on what they hold, and a long teacher prefill can take minutes on a CPU.

- `speed_and_samples(teacher, student, cfg, tok)`: what `transmamba convert` measures of both models
  after training (decoding and prefill speeds, cache sizes, greedy samples) for its report
  (`evaluation.report_md`: `speed_rows`, `speed_setup`, the samples section).

Used by `transmamba convert` and by the `bench lm` / `bench convert` benchmarks.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch

from transmamba.teachers.load import LLAMA_FAMILY, teacher_spec


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


def alternating_medians(measures: list[Callable[[], tuple]], rounds: int) -> list[tuple]:
    """Run `measures` in turn (a, b, a, b, ...) for `rounds` rounds. Each returns (ms, *extra);
    each result is (the median of its ms over the rounds, *the extra of its last round)."""
    runs = [[] for _ in measures]
    for _ in range(rounds):
        for out, measure in zip(runs, measures):
            out.append(measure())
    return [(statistics.median(r[0] for r in out), *out[-1][1:]) for out in runs]


def cache_nbytes(caches) -> int:
    """Bytes of every tensor held by the layer caches (dataclasses of tensors; a cache with its own
    `nbytes()`, such as a Switch layer's with head groups, counts itself)."""
    total = 0
    for c in caches:
        if not dataclasses.is_dataclass(c):
            raise TypeError(f"caches must hold dataclass caches (from allocate_caches), got {type(c).__name__}")
        if callable(getattr(c, "nbytes", None)):
            total += c.nbytes()
            continue
        for f in dataclasses.fields(c):
            t = getattr(c, f.name)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def fill_caches(model, caches, context: int, batch: int = 1) -> None:
    """Make an LM's caches look as if `context` tokens had been consumed (by `batch` rows): each
    layer's mixer fills its own cache (`fill_cache`: Switch layers with TransPoint <= context get an
    SSM state, the others `context` KV entries; Mamba layers a conv and SSM state; attention layers
    `context` keys and values). Contents are random; sizes and positions are exact. A cache that is
    not its mixer's (`cache_cls`), or a mixer without `fill_cache`, is a TypeError."""
    for block, c in zip(model.blocks, caches):
        mix = block.mixer
        fill = getattr(mix, "fill_cache", None)
        cache_cls = getattr(mix, "cache_cls", None)
        if fill is None or cache_cls is None or not isinstance(c, cache_cls):
            raise TypeError(f"fill_caches: unknown cache {type(c).__name__} (layer kind "
                            f"{getattr(block, 'kind', '?')!r}, whose {type(mix).__name__} cannot fill it); "
                            f"use synthetic=False")
        fill(c, context, batch)


def kv_fillable(config, context: int) -> bool:
    """Whether `random_kv_cache` sizes this model's cache exactly after `context` tokens: a
    Llama-family model (`LLAMA_FAMILY`) whose every layer keeps all keys/values (no sliding window
    shorter than the context)."""
    window = getattr(config, "sliding_window", None)
    return getattr(config, "model_type", None) in LLAMA_FAMILY and (window is None or context <= window)


def random_kv_cache(config, context: int, batch: int = 1):
    """A transformers `DynamicCache` holding `context` random keys/values per layer, shaped as a
    prefill of a Llama-family model (`teacher_spec`: layers, kv heads, head dim) would leave it.
    Refuses a model whose cache it would not size exactly (`kv_fillable`)."""
    from transformers import DynamicCache

    if not kv_fillable(config, context):
        raise ValueError(f"random_kv_cache: cannot size the cache of model_type {config.model_type!r} "
                         f"(sliding_window {getattr(config, 'sliding_window', None)}) after {context} tokens; "
                         f"expected one of {LLAMA_FAMILY} without a sliding window shorter than the context; "
                         f"use synthetic=False")
    spec, past = teacher_spec(config), DynamicCache()
    for i in range(spec["n_layers"]):
        kv = torch.randn(2, batch, spec["n_kv_heads"], context, spec["head_dim"])
        past.update(kv[0], kv[1], i)
    return past


@torch.no_grad()
def decode_speed(model, context: int, n_tokens: int, *, synthetic: bool = False, warmup: int = 2,
                 max_s: float = 30.0, batch: int = 1) -> tuple[float, float]:
    """(ms per decoding step, MiB held by the caches) of an LM at a context of `context` tokens,
    `batch` rows (one step decodes one token per row). The context is prefilled, or with `synthetic`
    the caches are filled to its size (`fill_caches`)."""
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
        past = random_kv_cache(teacher.config, context, batch)
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


def speed_and_samples(teacher, student, cfg, tok) -> dict:
    """Both models, fp32 (an architecture comparison: under bf16 autocast an AVX512-BF16 CPU decodes
    the HF teacher slower than in fp32 and our student faster, which would flatter the student):
    decoding ms/token and cache MB at each `eval.speed_contexts` context and
    `eval.speed_batches` batch (caches filled to its size with `eval.speed_synthetic`, else by a
    real prefill), prefill tokens/s at each `eval.prefill_contexts` length (batch 1), and greedy
    continuations. Each speed is the median of `eval.speed_rounds` rounds that alternate student
    and teacher, so that a drift of a shared machine's speed hits both alike; prefill takes
    `eval.prefill_rounds` rounds (None: as many), as one round of a long prefill is seconds long.
    Returns {"speed": [{context, batch, student_tok_s, teacher_tok_s, student_cache_mb,
    teacher_cache_mb, synthetic_cache}], "speed_rounds", "speed_threads", "cpu", "prefill":
    [{context, student_tok_s, teacher_tok_s}], "prefill_rounds", "samples": [{prompt, teacher, student}]}."""
    from transmamba.hardware.machine import cpu_model

    ev, res = cfg["eval"], {}
    student.eval()
    contexts = ev.get("speed_contexts")  # [] = no decoding rows; None = the one eval.speed_context
    if contexts is None:
        contexts = [ev["speed_context"]] if ev.get("speed_context") else []
    synthetic = bool(ev.get("speed_synthetic"))
    rounds, n = int(ev["speed_rounds"]), ev["speed_tokens"]
    res["speed"], res["speed_rounds"], res["speed_threads"] = [], rounds, torch.get_num_threads()
    res["cpu"] = cpu_model()
    for C in contexts:
        for B in ev.get("speed_batches") or [1]:
            kw = dict(synthetic=synthetic, batch=int(B))
            (ms_s, mb_s), (ms_t, mb_t) = alternating_medians(
                [lambda: decode_speed(student, int(C), n, warmup=1, max_s=60, **kw),
                 lambda: teacher_decode_speed(teacher, int(C), n, **kw)], rounds)
            res["speed"].append({"context": int(C), "batch": int(B), "student_tok_s": B * 1e3 / ms_s,
                                 "teacher_tok_s": B * 1e3 / ms_t, "student_cache_mb": mb_s, "teacher_cache_mb": mb_t,
                                 "synthetic_cache": synthetic})
    res["prefill"], res["prefill_rounds"] = [], int(ev.get("prefill_rounds") or rounds)
    for L in ev.get("prefill_contexts") or []:
        idx = torch.randint(0, student.cfg.vocab_size, (1, int(L)))
        with torch.no_grad():
            (t_s,), (t_t,) = alternating_medians(
                [lambda: (time_ms(lambda: student(idx), reps=1, warmup=0),),
                 lambda: (time_ms(lambda: teacher(idx, use_cache=False), reps=1, warmup=0),)], res["prefill_rounds"])
        res["prefill"].append({"context": int(L), "student_tok_s": L / t_s * 1e3, "teacher_tok_s": L / t_t * 1e3})
    samples = []
    for prompt in ev["prompts"]:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            s_out = student.generate(ids, ev["prompt_tokens"], temperature=0)
            t_out = teacher.generate(ids, max_new_tokens=ev["prompt_tokens"], do_sample=False,
                                     pad_token_id=tok.eos_token_id or 0)
        samples.append({"prompt": prompt, "teacher": tok.decode(t_out[0, ids.shape[1]:]),
                        "student": tok.decode(s_out[0, ids.shape[1]:])})
    res["samples"] = samples
    return res
