"""Classification metrics (images, clips, VQA answers): mean cross-entropy and top-1 accuracy,
overall and per named subset of the examples.

    loss = sum_i CE(logits_i, y_i) / n,   top1 = #{argmax logits_i == y_i} / n
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


@torch.no_grad()
def classify(logits_fn: Callable[[torch.Tensor], torch.Tensor], n: int, y: torch.Tensor, *,
             batch_size: int = 500, subsets: dict[str, torch.Tensor] | None = None) -> dict:
    """{"loss", "top1", "top1_<subset>" ...} of logits_fn(idx) -> "b classes" over examples 0..n-1.

    logits_fn gets the example indices of one batch; subsets: {name: bool mask "(n,)"} (a subset
    with no example reports None)."""
    if n == 0:
        raise ValueError("cannot evaluate on 0 examples")
    loss, pred = 0.0, []
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(s + batch_size, n))
        logits = logits_fn(idx).float()
        loss += float(F.cross_entropy(logits, y[idx], reduction="sum"))
        pred.append(logits.argmax(-1))
    ok = (torch.cat(pred) == y).float()
    out = {"loss": loss / n, "top1": float(ok.mean())}
    for name, sel in (subsets or {}).items():
        out[f"top1_{name}"] = float(ok[sel].mean()) if bool(sel.any()) else None
    return out


def evaluate_classifier(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, top-1) of `model(x) -> logits` in eval mode."""
    was = model.training
    model.eval()
    try:
        r = classify(lambda idx: model(x[idx]), len(x), y, batch_size=batch_size)
    finally:
        model.train(was)
    return r["loss"], r["top1"]
