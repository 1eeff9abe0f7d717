"""Head-level TransPoints: one TransPoint per KV head of a TransMamba-Switch layer.

A Switch layer's TransPoint P is an int (every head, every row), an integer tensor "b" (one per
row), or, here, one per KV head: KV head j (with its query heads, grouped-query attention) attends
at positions t < P_j and runs the SSM from P_j on, its SSM state at P_j made by the Memory
converter from that head's own prefix K, V, dt. Two forms:

    HeadTransPoints((P_0, ..., P_{g-1}))   the same for every row (g = n_kv_heads)
    an integer tensor "b g"                one per row and KV head (what left padding makes of the
                                           first form: each row's TransPoints shifted by its padding)

A per-head P is a distinct type, not a list, so that it is never mistaken for a per-row P. In the
per-layer lists of `transmamba.models.lm.LM` (and the schedules' output) a per-head P is a plain
list of g ints; `layer_transpoint` turns it into a `HeadTransPoints`.

`head_groups` splits the heads into groups of equal TransPoint: `SwitchMixer` runs each group on
its own heads only (attention for a kept group, the SSM for a switched one), so a kept head costs
only its own attention.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch


def _check_int(p, what: str) -> int:
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 0:
        raise ValueError(f"{what} must be ints >= 0, got {p!r}")
    return int(p)


@dataclass(frozen=True)
class HeadTransPoints:
    """One TransPoint per KV head, the same for every row: P[j] for KV head j."""

    P: tuple[int, ...]

    def __post_init__(self):
        P = self.P
        if isinstance(P, torch.Tensor):
            if P.dim() != 1 or P.is_floating_point() or P.is_complex() or P.dtype == torch.bool:
                raise ValueError(f"per-head transpoint must be integers of shape (n_kv_heads,), got a tensor of "
                                 f"shape {tuple(P.shape)} and dtype {P.dtype}")
            P = P.tolist()
        if not isinstance(P, (list, tuple)) or not P:
            raise ValueError(f"per-head transpoint must be a non-empty sequence of ints (one per KV head), got {P!r}")
        object.__setattr__(self, "P", tuple(_check_int(p, "per-head transpoint entries") for p in P))

    def __len__(self) -> int:
        return len(self.P)

    def __iter__(self):
        return iter(self.P)

    def shifted(self, by: int) -> tuple[int, ...]:
        """Every head's P plus `by` (a row's left padding)."""
        return tuple(p + by for p in self.P)


def layer_transpoint(P):
    """One layer's entry of a per-layer TransPoint list: a list/tuple (one int per KV head) becomes
    a `HeadTransPoints`; anything else (an int, a tensor, a HeadTransPoints, None) is returned as is."""
    return HeadTransPoints(tuple(P)) if isinstance(P, (list, tuple)) else P


def is_head_level(P) -> bool:
    """Whether P is a per-head TransPoint (a HeadTransPoints, a 2-D tensor "b g" or a list/tuple)."""
    return isinstance(P, (HeadTransPoints, list, tuple)) or (isinstance(P, torch.Tensor) and P.dim() == 2)


def check_head_transpoints(P, batch: int, n_kv_heads: int, name: str = "transpoint"):
    """A per-head TransPoint of a layer with `n_kv_heads` KV heads: a HeadTransPoints of that many
    entries, or an integer tensor of shape (batch, n_kv_heads) with entries >= 0 (returned as int64).
    Anything else is a ValueError naming `name`."""
    if isinstance(P, HeadTransPoints):
        if len(P) != n_kv_heads:
            raise ValueError(f"{name}: per-head TransPoints have {len(P)} entries, the layer has n_kv_heads="
                             f"{n_kv_heads}")
        return P
    if not isinstance(P, torch.Tensor) or P.dim() != 2:
        raise ValueError(f"{name}: a per-head TransPoint is a HeadTransPoints or an integer tensor of shape "
                         f"(b, n_kv_heads), got {type(P).__name__}")
    if P.is_floating_point() or P.is_complex() or P.dtype == torch.bool or tuple(P.shape) != (batch, n_kv_heads):
        raise ValueError(f"{name} must be an integer tensor of shape ({batch}, {n_kv_heads}) (rows, KV heads), got "
                         f"a tensor of shape {tuple(P.shape)} and dtype {P.dtype}")
    if P.numel() and int(P.min()) < 0:
        raise ValueError(f"{name} must be >= 0 for every row and head, got min {int(P.min())}")
    return P.long()


def collapse(P):
    """A per-head P whose heads all agree, as the layer-wide P: an int (HeadTransPoints) or a per-row
    tensor "b" (a "b g" tensor); any other P is returned unchanged."""
    if isinstance(P, HeadTransPoints):
        return P.P[0] if len(set(P.P)) == 1 else P
    if isinstance(P, torch.Tensor) and P.dim() == 2:
        return P[:, 0] if P.shape[1] == 1 or bool((P == P[:, :1]).all()) else P
    return P


def head_groups(P) -> list[tuple[tuple[int, ...], int | torch.Tensor]]:
    """The KV heads of a per-head P grouped by equal TransPoint, in order of their first head:
    [(kv_heads, P_group)], P_group an int (a HeadTransPoints, or a tensor column equal in every row)
    or a per-row tensor "b"."""
    groups: list[tuple[list[int], int | torch.Tensor]] = []
    if isinstance(P, HeadTransPoints):
        cols = list(P.P)
    else:
        cols = []
        for j in range(P.shape[1]):
            c = P[:, j]
            cols.append(int(c[0]) if c.numel() and bool((c == c[0]).all()) else c)
    for j, c in enumerate(cols):
        for heads, pg in groups:
            if type(pg) is type(c) and (torch.equal(pg, c) if isinstance(c, torch.Tensor) else pg == c):
                heads.append(j)
                break
        else:
            groups.append(([j], c))
    return [(tuple(heads), pg) for heads, pg in groups]


def same_transpoint(a, b) -> bool:
    """Whether two TransPoints (int, per-row tensor, HeadTransPoints or "b g" tensor) are the same."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and torch.equal(a, b.to(a.device)))
    return type(a) is type(b) and a == b
