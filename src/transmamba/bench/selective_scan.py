"""Benchmark: chunked selective scan vs mambapy's pscan-based selective scan.

Shape: b=1, d=768 (expand 2 of d_model 384), n=16, float32, same inputs for both. The peer is
what `mambapy.mamba.MambaBlock.selective_scan` computes: it materializes
deltaA = exp(delta A) and BX = delta B x of shape "(b, l, d, n)" and runs a Blelloch scan.
"""

from __future__ import annotations


import torch

from transmamba.bench.harness import emit, fwd_bwd, peak_memory_mb, row
from transmamba.evaluation.speed import time_ms
from transmamba.ops.selective_scan import selective_scan

BATCH, D_INNER, D_STATE = 1, 768, 16


def _peer(x, delta, A, B, C, D):
    """mambapy's selective scan (MambaBlock.selective_scan), called through its pscan."""
    from mambapy.pscan import pscan

    deltaA = torch.exp(delta.unsqueeze(-1) * A)
    BX = delta.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs @ C.unsqueeze(-1)).squeeze(3)
    return y + D * x


def _inputs(L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, L, D_INNER, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(BATCH, L, D_INNER, generator=g) - 2.0)
    A = -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(D_INNER, 1)
    B = torch.randn(BATCH, L, D_STATE, generator=g)
    C = torch.randn(BATCH, L, D_STATE, generator=g)
    D = torch.ones(D_INNER)
    return [t.requires_grad_() for t in (x, delta, A, B, C, D)]


def rows(Ls: list[int], threads: int | None = None) -> list[dict]:
    """Per L: forward and forward+backward time, peak memory and max |ours - peer| (y, then grads).

    Both sides run with `threads` intra-op threads (restored afterwards; None, the default, leaves
    torch's setting alone). On an oversubscribed box, 1 thread gives steadier ratios: the OpenMP
    fork/join of every mid-sized op then waits on descheduled threads.
    """
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return [r for L in Ls for r in _rows_at(L)]
    finally:
        torch.set_num_threads(prev)


def _rows_at(L: int) -> list[dict]:
    """Forward and forward+backward rows at one length (memory runs double as warm-up)."""
    ins = _inputs(L)
    x, delta, A, B, C, D = ins
    ours = lambda: selective_scan(x, delta, A, B, C, D=D)  # noqa: E731
    peer = lambda: _peer(x, delta, A, B, C, D)  # noqa: E731
    reps = 3 if L <= 512 else 2 if L <= 2048 else 1
    ys = {}  # outputs kept from the memory runs, so no extra forward is needed for the error
    with torch.no_grad():
        m_ours = peak_memory_mb(lambda: ys.__setitem__("ours", ours()))
        m_peer = peak_memory_mb(lambda: ys.__setitem__("peer", peer()))
        err = (ys.pop("ours") - ys.pop("peer")).abs().max().item()
        t_ours = time_ms(ours, reps=reps, warmup=0)
        t_peer = time_ms(peer, reps=reps, warmup=0)
    fwd = row("selective_scan fwd", L, t_ours, t_peer, ours_mb=round(m_ours, 1),
                 peer_mb=round(m_peer, 1), max_abs_err=err)
    f_ours, f_peer = fwd_bwd(ours, ins), fwd_bwd(peer, ins)
    m_ours = peak_memory_mb(f_ours)
    g_ours = [p.grad.clone() for p in ins]
    m_peer = peak_memory_mb(f_peer)
    gerr = max((p.grad - g).abs().max().item() for p, g in zip(ins, g_ours))
    t_ours = time_ms(f_ours, reps=reps, warmup=0)
    t_peer = time_ms(f_peer, reps=reps, warmup=0)
    fb = row("selective_scan fwd+bwd", L, t_ours, t_peer, ours_mb=round(m_ours, 1),
                peer_mb=round(m_peer, 1), max_abs_err=gerr)
    return [fwd, fb]


def run(quick: bool) -> list[dict]:
    return rows([512, 2048] if quick else [512, 2048, 8192])


if __name__ == "__main__":
    import sys

    emit(rows([int(a) for a in sys.argv[1:]] or [512, 2048, 8192]), as_json=False)
