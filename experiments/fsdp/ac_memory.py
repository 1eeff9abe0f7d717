"""Peak memory of training steps at 2k-token windows with and without activation checkpointing
(`transmamba.training.fsdp.checkpoint_blocks`, what `train.activation_checkpointing: true` does).

One setting per fresh process (peak RSS = `resource.getrusage(RUSAGE_SELF).ru_maxrss`, which
covers torch's allocations; tracemalloc does not): an LM of the library (`transmamba.models.lm.LM`,
TransMamba-Switch layers, d 384, 8 layers, vocab 8192: ~17M parameters) trains STEPS AdamW steps on
random tokens, batch B x 2048; the script prints the losses, the RSS after building the model and
optimizer, and the peak. `compare` runs both settings one after the other and checks the losses
agree to 1e-6.

    .venv/bin/python experiments/fsdp/ac_memory.py compare [--steps 3] [--batch 1] [--seq 2048] [--out FILE]
    .venv/bin/python experiments/fsdp/ac_memory.py one --ac 0|1 [--steps 3] [--batch 1] [--seq 2048]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(ac: bool, steps: int, batch: int, seq: int, threads: int) -> dict:
    import torch

    from transmamba.models.lm import LM, LMConfig
    from transmamba.training.fsdp import checkpoint_blocks
    from transmamba.training.optim import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=8192, d_model=384, n_layers=8, n_heads=6, head_dim=64, max_seq_len=seq))
    n_blocks = checkpoint_blocks(model) if ac else 0
    opt = make_optimizer([model], {"weight_decay": 0.1, "lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8})
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 8192, (batch, seq + 1), generator=g) for _ in range(steps)]
    base = rss_mb()
    losses, times = [], []
    for tok in data:
        t = time.perf_counter()
        _, loss = model(tok[:, :-1], tok[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"activation_checkpointing": ac, "blocks_checkpointed": n_blocks,
            "params": sum(p.numel() for p in model.parameters()), "batch": batch, "seq_len": seq, "steps": steps,
            "threads": threads, "losses": losses, "step_s": times, "rss_before_steps_mb": round(base, 1),
            "peak_rss_mb": round(peak, 1), "peak_minus_before_mb": round(peak - base, 1)}


def compare(args) -> dict:
    rows = []
    for ac in (0, 1):  # one fresh process each, one after the other
        cmd = [sys.executable, __file__, "one", "--ac", str(ac), "--steps", str(args.steps), "--batch",
               str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    off, on = rows
    diff = max(abs(a - b) for a, b in zip(off["losses"], on["losses"]))
    res = {"without": off, "with": on, "max_loss_diff": diff, "losses_equal_1e-6": diff <= 1e-6,
           "peak_ratio": round(on["peak_rss_mb"] / off["peak_rss_mb"], 3),
           "step_memory_ratio": round(on["peak_minus_before_mb"] / off["peak_minus_before_mb"], 3)}
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["one", "compare"])
    p.add_argument("--ac", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    res = one(bool(a.ac), a.steps, a.batch, a.seq, a.threads) if a.mode == "one" else compare(a)
    text = json.dumps(res)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(text)
