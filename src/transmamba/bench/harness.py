"""Peak-memory measurement shared by every benchmark, plus table/JSON output (timing:
`transmamba.evaluation.speed.time_ms`).

Peak memory on CPU is the growth of the process's resident high-water mark (VmHWM) over the
resident size just before the call; the mark is reset through /proc/self/clear_refs (Linux).
While measuring, glibc hands blocks >= 256 KiB back to the OS (`training.heap.release_freed_memory`):
by default it keeps freed memory resident, and a later call peaking inside those pages reads ~0 MiB.
"""

from __future__ import annotations

import gc
import json
import re
from typing import Callable

import torch

from transmamba.training import heap


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Extra resident memory (MiB) at the peak of one call of `fn`, over the memory before it."""
    gc.collect()
    with heap.release_freed_memory():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return float("nan")
        before = _status_mb("VmRSS")
        out = fn()
        del out
        return max(_status_mb("VmHWM") - before, 0.0)


def fwd_bwd(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> Callable[[], None]:
    """Wrap a forward so that one call runs forward and backward (grads cleared each time)."""

    def run():
        for p in params:
            p.grad = None
        fn().float().square().mean().backward()

    return run


def row(name: str, L: int, ours_ms: float, peer_ms: float, **extra) -> dict:
    """One result row in the shared schema; ratio = peer / ours (> 1 means we are faster)."""
    return {"name": name, "L": L, "ours_ms": round(ours_ms, 3), "peer_ms": round(peer_ms, 3),
            "ratio": round(peer_ms / ours_ms, 3) if ours_ms > 0 else float("nan"), **extra}


def print_table(rows: list[dict]) -> None:
    keys = ["name", "L", "ours_ms", "peer_ms", "ratio"]
    extra = [k for r in rows for k in r if k not in keys]
    keys += list(dict.fromkeys(extra))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) if cells else len(k) for i, k in enumerate(keys)]
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |")


def emit(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"results": rows}))
    else:
        print_table(rows)
