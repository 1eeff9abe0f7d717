"""Held-out perplexity of a causal LM: ours (any schedule of TransPoints) or a transformers teacher.

    val_loss = sum_i CE(logits_i, y_i) / n_tokens over the first `n_batches * batch_size`
    non-overlapping windows of the stream (`transmamba.data.text.eval_batches`),
    val_ppl  = exp(val_loss)

Both models go through the same function: `logits_fn(x) -> "b l V"` logits.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from transmamba.hardware.precision import autocast


@torch.no_grad()
def perplexity(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: np.ndarray, *, batch_size: int,
               seq_len: int, n_batches: int, device: torch.device | str = "cpu", amp: str = "none") -> dict:
    """{"val_loss", "val_ppl", "val_tokens"} of `logits_fn` on the held-out stream `ids` "(n,)"."""
    from transmamba.data.text import eval_batches

    device = torch.device(device)
    total, count = 0.0, 0
    for x, y in eval_batches(ids, batch_size, seq_len, max_windows=n_batches * batch_size):
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            logits = logits_fn(x)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    val_loss = total / max(count, 1)
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)), "val_tokens": count}


def lm_perplexity(model, ids: np.ndarray, *, batch_size: int, seq_len: int, n_batches: int,
                  device: torch.device | str = "cpu", amp: str = "none", transpoints=None) -> dict:
    """`perplexity` of our LM (eval mode) with the schedule's evaluation TransPoints unless given."""
    was = model.training
    model.eval()
    tp = model.transpoints_for(seq_len, None) if transpoints is None else transpoints
    try:
        return perplexity(lambda x: model(x, transpoints=tp)[0], ids, batch_size=batch_size, seq_len=seq_len,
                          n_batches=n_batches, device=device, amp=amp)
    finally:
        model.train(was)


def hf_perplexity(model, ids: np.ndarray, *, batch_size: int, seq_len: int, n_batches: int,
                  device: torch.device | str = "cpu") -> dict:
    """`perplexity` of a transformers causal LM (its `.logits`)."""
    return perplexity(lambda x: model(x).logits, ids, batch_size=batch_size, seq_len=seq_len,
                      n_batches=n_batches, device=device)
