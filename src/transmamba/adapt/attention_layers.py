"""Which Switch layers keep attention: a layer-wise hybrid chosen by what switching each layer costs.

A TransMamba-Switch student whose every layer switches at its TransPoint P runs the SSM for every
token past P. Some layers' SSM paths stand in for their attention far worse than others, and one
such layer can cost more than many good ones. `recipe.keep_attention = k` keeps the k layers that
cost most as attention at every position (P = ATTENTION_ONLY: their KV cache grows with the
context, the other layers' state stays constant) and leaves the rest on the schedule:

    cost_i = KL_topk(teacher || student with ONLY layer i at its TransPoint, every other layer attention)
           - KL_topk(teacher || student with every layer attention)

measured on cached teacher windows (the top-k log-probs `transmamba.teachers.cache` holds),
with no gradient. The choice is written into the student's schedule (`modules.schedule.Hybrid`),
so the saved student decodes as it was evaluated. Mamba-in-the-Llama and Bamba-style hybrids keep
attention at fixed strides; here the teacher's own numbers choose the layers.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from transmamba.modules.schedule import ATTENTION_ONLY


@torch.no_grad()
def switch_costs(model, windows: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], transpoints: list[int],
                 kl: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> list[float]:
    """cost_i for every layer i (see the module docstring): `windows` of (x "b l", topk_idx "b l k",
    topk_logp "b l k"), `transpoints` the per-layer TransPoints a switched layer uses, `kl(logits,
    topk_idx, topk_logp)` the distillation KL. A layer whose P >= l never switches: its cost is 0."""
    windows = list(windows)
    if not windows:
        raise ValueError("switch_costs needs at least one window")
    n = model.cfg.n_layers
    if len(transpoints) != n:
        raise ValueError(f"switch_costs: {len(transpoints)} transpoints for {n} layers")

    seq_len = windows[0][0].shape[1]
    switched = [i for i in range(n) if transpoints[i] < seq_len]
    attention = [ATTENTION_ONLY] * n
    base, kls = 0.0, {i: 0.0 for i in switched}

    def kl_of(x_L, ti, tl):
        z = model.head(x_L)
        return float(kl(z if z.dtype == torch.float64 else z.float(), ti, tl))  # bf16 logits -> fp32

    for x, ti, tl in windows:
        # One all-attention pass; switching layer i leaves blocks 0..i-1 as they are, so each
        # switched run starts from the all-attention stream at block i (about half the work).
        x_L, hidden = model.trunk(x, attention, return_hidden=True)
        base += kl_of(x_L, ti, tl)
        for i in switched:
            kls[i] += kl_of(model.blocks_from(hidden[i], i, attention[:i] + [transpoints[i]] + attention[i + 1:]), ti, tl)
    return [(kls[i] - base) / len(windows) if i in kls else 0.0 for i in range(n)]


def check_keep_attention(k: int, n_layers: int) -> None:
    """Refuse keeping k layers on attention in a student of n_layers unless 0 <= k <= n_layers."""
    if not 0 <= k <= n_layers:
        raise ValueError(f"recipe.keep_attention must be in [0, {n_layers}] (the student's layers), got {k}")


def check_switching(k: int, transpoints: list[int], seq_len: int) -> None:
    """Refuse keep_attention = k when fewer than k layers switch within seq_len tokens: the others'
    switch costs would all be 0 and the choice among them arbitrary."""
    switched = [i for i, P in enumerate(transpoints) if P < seq_len]
    if k and len(switched) < k:
        raise ValueError(f"recipe.keep_attention {k}: at data.seq_len {seq_len} only {len(switched)} layer(s) switch "
                         f"(TransPoints {sorted(set(transpoints))}), so the switch costs of the others are all 0 and "
                         f"choosing among them would be arbitrary; use a data.seq_len above the TransPoints")


def costliest(costs: list[float], k: int) -> list[int]:
    """The k layers of largest cost, ascending layer order (ties: the lower layer first)."""
    check_keep_attention(k, len(costs))
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    return sorted(order[:k])
