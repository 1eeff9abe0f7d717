"""Batch image augmentation for training vision teachers: random translation and horizontal flip.

`shift_flip(x, max_shift, flip, fill, gen)` takes "n c h w" and returns, per image i,

    out_i[c, r, s] = x_i[c, r + dy_i, s' + dx_i]   (fill where r + dy_i or s' + dx_i is outside)
    s' = w - 1 - s if flip_i else s

with dy_i, dx_i uniform in [-max_shift, max_shift] and flip_i a fair coin (when `flip`). This is the
usual pad-and-random-crop plus mirror, done with one gather on the padded batch. `fill` is the
value of an empty (black) pixel after normalisation, -mean/std for the datasets here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_flip(x: torch.Tensor, max_shift: int = 0, flip: bool = False, fill: float = 0.0,
               gen: torch.Generator | None = None) -> torch.Tensor:
    """Randomly translate every image of "n c h w" by up to `max_shift` pixels and mirror half."""
    if x.dim() != 4:
        raise ValueError(f"shift_flip expects images 'n c h w', got shape {tuple(x.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    n, _, h, w = x.shape
    if max_shift == 0 and not flip:
        return x
    s = int(max_shift)
    dy = torch.randint(-s, s + 1, (n,), generator=gen)
    dx = torch.randint(-s, s + 1, (n,), generator=gen)
    cols = torch.arange(w).expand(n, w)
    if flip:
        mirror = torch.rand(n, generator=gen) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(-1), cols)
    rows = torch.arange(h)[None, :] + dy[:, None] + s  # "n h", indices into the padded image
    cols = cols + dx[:, None] + s                       # "n w"
    padded = F.pad(x, (s, s, s, s), value=fill)
    n_idx = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[n_idx, rows[:, :, None], cols[:, None, :]]  # "n h w c"
    return out.permute(0, 3, 1, 2).contiguous()
