"""Optimizer groups and the learning-rate schedule of the one training loop.

AdamW groups (`param_groups`): weight decay on matmul/embedding weights only; biases, norm gains,
SSM vectors (A_log, D, dt_bias: every parameter of rank < 2), position/class/direction tokens and
parameters flagged `_no_weight_decay` are not decayed. A per-parameter lr multiplier (`lr_scale`,
the vision recipe's `init.lr_scale` for teacher-initialised weights) puts those parameters in
groups of their own; every group carries "lr_scale" and the engine sets its lr to
lr_scale * lr_at(step).

    warmup (s < W):  lr(s) = lr * (s + 1) / W
    cosine (s >= W): lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / max(1, S - W))) / 2
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "temporal_pos", "dir_embed", "A_log")


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of the optimizer step with 0-based index `step` (formula in the module doc)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps_for(tokens: int, batch_size: int, seq_len: int) -> int:
    """steps = ceil(tokens / (batch_size * seq_len)): a token budget in optimizer steps."""
    return max(1, math.ceil(tokens / (batch_size * seq_len)))


def decays(name: str, p: torch.Tensor) -> bool:
    """Whether parameter `name` gets weight decay (see the module doc)."""
    return not (p.dim() < 2 or getattr(p, "_no_weight_decay", False) or any(k in name for k in NO_DECAY_NAMES))


def param_groups(modules: Iterable[nn.Module], weight_decay: float,
                 lr_scale: dict[int, float] | None = None) -> list[dict]:
    """AdamW groups over the trainable parameters of `modules` (each parameter once).

    lr_scale: {id(param): s}. Groups come in a fixed order: decayed, not decayed (both scale 1),
    then one group per (decay, scale != 1)."""
    lr_scale = lr_scale or {}
    groups: dict[tuple[bool, float], list] = {}
    seen: set[int] = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            groups.setdefault((decays(name, p), float(lr_scale.get(id(p), 1.0))), []).append(p)
    keys = [(True, 1.0), (False, 1.0)] + sorted(k for k in groups if k[1] != 1.0)
    return [{"params": groups.get(k, []), "weight_decay": weight_decay if k[0] else 0.0, "lr_scale": k[1]}
            for k in keys]


def make_optimizer(modules: Iterable[nn.Module], tcfg: dict, lr_scale: dict[int, float] | None = None,
                   device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups` with the train section's lr, betas, eps and weight_decay."""
    kw = {"fused": True} if device is not None and device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups(modules, float(tcfg["weight_decay"]), lr_scale), lr=float(tcfg["lr"]),
                             betas=tuple(float(b) for b in tcfg["betas"]), eps=float(tcfg["eps"]), **kw)
