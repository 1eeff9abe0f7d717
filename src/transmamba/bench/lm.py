"""`transmamba bench lm`: the four LM architectures at equal size, forward / train step / decoding.

ours = TransMamba-Switch (staggered TransPoints over the 512-token training length), peer = the
Transformer; Mamba-2 and hybrid times ride along as extra keys. Decoding rows prefill a context
of L tokens, then time single-token steps (`transmamba.evaluation.speed.decode_speed`); cache
memory is the bytes held by all layer caches.
"""

from __future__ import annotations

import torch

from transmamba.bench.harness import row
from transmamba.evaluation.speed import decode_speed, time_ms
from transmamba.models.lm import ARCHS, LM, LMConfig

BENCH_MODEL = dict(vocab_size=8192, d_model=384, n_layers=8, n_heads=6, head_dim=64, d_state=64,
                   schedule={"name": "staggered", "period": 8, "span": 512}, max_seq_len=512)


def build(arch: str) -> LM:
    torch.manual_seed(0)
    return LM(LMConfig(arch=arch, **BENCH_MODEL))


def _forward_ms(model, L, reps):
    idx = torch.randint(0, model.cfg.vocab_size, (1, L))
    with torch.no_grad():
        return time_ms(lambda: model(idx), reps=reps, warmup=int(L < 8192))


def _train_ms(model, L, reps):
    idx = torch.randint(0, model.cfg.vocab_size, (1, L + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = model(idx[:, :-1], targets=idx[:, 1:], transpoints=model.transpoints_for(L, step=0))
        loss.backward()
        opt.step()

    return time_ms(step, reps=reps, warmup=int(L < 8192))


def rows(Ls=(1024, 4096, 16384), decode_contexts=(1024, 8192), reps=3, n_decode=16) -> list[dict]:
    models = {a: build(a) for a in ARCHS}
    out = []
    for L in Ls:
        for what, fn in (("lm forward", _forward_ms), ("lm train step", _train_ms)):
            t = {a: fn(m, L, reps) for a, m in models.items()}
            out.append(row(what, L, t["transmamba"], t["transformer"], mamba2_ms=round(t["mamba2"], 2),
                           hybrid_ms=round(t["hybrid"], 2),
                           tok_per_s_ours=round(L / t["transmamba"] * 1e3, 1),
                           tok_per_s_peer=round(L / t["transformer"] * 1e3, 1)))
    for C in decode_contexts:
        d = {a: decode_speed(m, C, n_decode) for a, m in models.items()}
        out.append(row("lm decode ms/token", C, d["transmamba"][0], d["transformer"][0],
                       ours_cache_mb=round(d["transmamba"][1], 2), peer_cache_mb=round(d["transformer"][1], 2),
                       mamba2_ms=round(d["mamba2"][0], 3), mamba2_cache_mb=round(d["mamba2"][1], 2),
                       hybrid_ms=round(d["hybrid"][0], 3), hybrid_cache_mb=round(d["hybrid"][1], 2)))
    return out


def run(quick: bool = False) -> list[dict]:
    if quick:
        return rows(Ls=(1024,), decode_contexts=(1024,), reps=2, n_decode=8)
    return rows()
