"""Benchmark: chunked SSD (ssd_chunked) against the sequential reference (ssd_ref), CPU float32.

Shape: b=1, h=8, p=64, n=64, g=1, chunk_size=64; dt = softplus(randn), A in [-1.1, -0.1).
The reference is a python loop over tokens; it is timed with one repetition (no warmup) once
l >= 2048 because its backward alone takes tens of seconds at l=8192, and it is timed inside the
same call that measures its peak memory. The "fwd" rows run under torch.no_grad (inference);
the "fwd+bwd" rows run forward and backward through autograd (harness.fwd_bwd).

The reference issues ~5 tiny ops per token; when the 2-core box is oversubscribed its two OpenMP
threads wait on each other at every op and it slows down far more than the chunked kernel does,
which inflates the ratio: compare ratios taken on a quiet machine.

    python -m transmamba.bench.ssd [L ...] [--json]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from transmamba.bench.harness import emit, fwd_bwd, peak_memory_mb, row
from transmamba.evaluation.speed import time_ms
from transmamba.ops.ssd import ssd_chunked, ssd_ref

SHAPE = dict(b=1, h=8, p=64, n=64, g=1)
CHUNK = 64


def _inputs(L: int, seed: int = 0):
    b, h, p, n, g = (SHAPE[k] for k in "bhpng")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen)
    dt = F.softplus(torch.randn(b, L, h, generator=gen))
    A = -torch.rand(h, generator=gen) - 0.1
    B = torch.randn(b, L, g, n, generator=gen) / n**0.5
    C = torch.randn(b, L, g, n, generator=gen) / n**0.5
    D = torch.randn(h, generator=gen)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


def _timed_once(fn):
    """Run fn once under peak_memory_mb; returns (ms, mb)."""
    box = {}

    def call():
        t0 = time.perf_counter()
        out = fn()
        box["ms"] = (time.perf_counter() - t0) * 1e3
        return out

    mb = peak_memory_mb(call)
    return box["ms"], mb


def rows(Ls: list[int]) -> list[dict]:
    out = []
    for L in Ls:
        x, dt, A, B, C, D = params = _inputs(L)
        ours = lambda: ssd_chunked(x, dt, A, B, C, D=D, chunk_size=CHUNK)  # noqa: E731
        peer = lambda: ssd_ref(x, dt, A, B, C, D=D)  # noqa: E731
        with torch.no_grad():
            y_ours, y_peer = ours(), peer()
        err = (y_ours - y_peer).abs().max().item()
        few = L >= 2048  # the python-loop reference is slow: one repetition
        for name, f_ours, f_peer, grad in [
            ("ssd_chunked fwd", ours, peer, False),
            ("ssd_chunked fwd+bwd", fwd_bwd(ours, params), fwd_bwd(peer, params), True),
        ]:
            with torch.set_grad_enabled(grad):
                ours_ms = time_ms(f_ours, reps=5, warmup=1)
                ours_mb = peak_memory_mb(f_ours)
                if few:
                    peer_ms, peer_mb = _timed_once(f_peer)
                else:
                    peer_ms = time_ms(f_peer, reps=2, warmup=0)
                    peer_mb = peak_memory_mb(f_peer)
            out.append(row(name, L, ours_ms, peer_ms, ours_mb=round(ours_mb, 1), peer_mb=round(peer_mb, 1),
                           max_abs_err=err, peer_reps=1 if few else 2))
    return out


def run(quick: bool) -> list[dict]:
    return rows([512, 2048] if quick else [512, 2048, 8192])


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--json"]
    emit(rows([int(a) for a in args] or [512, 2048]), "--json" in sys.argv)
