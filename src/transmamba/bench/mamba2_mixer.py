"""Our `Mamba2` mixer vs Hugging Face `Mamba2Mixer` (its pure-torch path), same config and weights.

Config: d_model=256, expand=2, headdim=64 (8 heads), d_state=64, ngroups=1, chunk 64, batch 1,
float32. Weights are created by HF and copied into ours (`Mamba2.from_hf_mixer`). Rows:
"mamba2 mixer fwd" (no grad) and "mamba2 mixer fwd+bwd" (loss mean(y^2), grads of x and all
parameters), with peak extra resident memory and the max |y_ours - y_hf|.
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch

from transmamba.bench.harness import emit, fwd_bwd, peak_memory_mb, row
from transmamba.evaluation.speed import time_ms
from transmamba.modules.mamba2 import Mamba2

CONFIG = dict(hidden_size=256, num_heads=8, head_dim=64, state_size=64, n_groups=1, expand=2,
              chunk_size=64, conv_kernel=4, num_hidden_layers=1)


def build(seed: int = 0):
    """(hf_mixer, our_mixer) with identical weights (HF init, dt_bias/A_log/D perturbed)."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    torch.manual_seed(seed)
    hf = Mamba2Mixer(Mamba2Config(**CONFIG), 0)
    with torch.no_grad():
        hf.D.add_(0.1 * torch.randn_like(hf.D))
        hf.norm.weight.add_(0.1 * torch.randn_like(hf.norm.weight))
    return hf, Mamba2.from_hf_mixer(hf)


def _quiet_hf():
    """Silence HF's one-off 'falling back to the reference implementation' warnings."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return contextlib.redirect_stderr(io.StringIO())


def rows(Ls: list[int]) -> list[dict]:
    out = []
    with _quiet_hf():
        hf, ours = build()
    d = CONFIG["hidden_size"]
    for L in Ls:
        reps = 5 if L <= 2048 else 3
        x = torch.randn(1, L, d, generator=torch.Generator().manual_seed(L))
        with torch.no_grad(), _quiet_hf():
            err = (ours(x) - hf(x)).abs().max().item()

            def f_ours():
                return ours(x)

            def f_hf():
                return hf(x)

            t_o, t_h = time_ms(f_ours, reps=reps), time_ms(f_hf, reps=reps)
            m_o, m_h = peak_memory_mb(f_ours), peak_memory_mb(f_hf)
        out.append(row("mamba2 mixer fwd", L, t_o, t_h, ours_mb=round(m_o, 1),
                       peer_mb=round(m_h, 1), max_abs_err=err))

        xg = x.clone().requires_grad_(True)
        b_o = fwd_bwd(lambda: ours(xg), [xg, *ours.parameters()])
        b_h = fwd_bwd(lambda: hf(xg), [xg, *hf.parameters()])
        with _quiet_hf():
            t_o, t_h = time_ms(b_o, reps=reps), time_ms(b_h, reps=reps)
            m_o, m_h = peak_memory_mb(b_o), peak_memory_mb(b_h)
        out.append(row("mamba2 mixer fwd+bwd", L, t_o, t_h, ours_mb=round(m_o, 1),
                       peer_mb=round(m_h, 1), max_abs_err=err))
    return out


def run(quick: bool = True) -> list[dict]:
    return rows([2048] if quick else [512, 2048, 8192])


if __name__ == "__main__":
    import sys

    emit(rows([int(a) for a in sys.argv[1:]] or [512, 2048, 8192]), as_json=False)
