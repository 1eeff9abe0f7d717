"""Retrieval metrics: recall at k and median rank, text -> visual and visual -> text.

A gallery pairs query i with item i (one right answer each). With s[i, j] = score(text i, visual j):

    rank_t2v(i) = 1 + #{j != i : s[i, j] >= s[i, i]}        (ties count against the query)
    rank_v2t(j) = 1 + #{i != j : s[i, j] >= s[j, j]}        (the same on the columns)
    R@k = #{rank <= k} / n,   MedR = median rank

The visual -> text scores may be a different matrix (a text-conditioned re-ranker scores only the
text -> visual direction).
"""

from __future__ import annotations

import torch

KS = (1, 5, 10)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """rank of the right item (the diagonal) in each row of a square score matrix "n n" -> "n"."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be square (n, n), got {tuple(scores.shape)}")
    s = scores.float()
    diag = s.diagonal()[:, None]
    ge = (s >= diag)
    return ge.sum(1)  # the diagonal itself counts 1


def recall_curve(r: torch.Tensor, max_k: int) -> list[float]:
    """[R@1 .. R@max_k] of ranks r."""
    return [float((r <= k).float().mean()) for k in range(1, max_k + 1)]


def retrieval_metrics(t2v: torch.Tensor, v2t: torch.Tensor | None = None, ks=KS) -> dict:
    """{"t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_..."}; t2v[i, j] = score(text i, visual j),
    v2t[i, j] the same pair's score for the visual -> text direction (default t2v)."""
    v2t = t2v if v2t is None else v2t
    out = {}
    for name, r in (("t2v", ranks(t2v)), ("v2t", ranks(v2t.transpose(0, 1)))):
        for k in ks:
            out[f"{name}_r{k}"] = float((r <= k).float().mean())
        out[f"{name}_medr"] = float(r.float().median())
    return out


def facet_r1(scores: torch.Tensor, facets: dict[str, torch.Tensor], prefix: str = "t2v") -> dict:
    """Which parts of the right answer each query's top-1 gets right: {"<prefix>_r1_<f>": fraction}.

    facets[f] "n" is facet f of item i (for clip captions: the item class and the direction). The
    top-1 of query i is i itself when rank(i) = 1, else its best-scoring wrong item (one that scores
    at least s[i, i]); R@1 <= every facet's R@1."""
    r = ranks(scores)
    wrong = scores.float().masked_fill(torch.eye(len(r), dtype=torch.bool, device=scores.device), float("-inf"))
    top = torch.where(r == 1, torch.arange(len(r), device=scores.device), wrong.argmax(1))
    out = {}
    for name, f in facets.items():
        if f.shape != r.shape:
            raise ValueError(f"facet {name!r} must have shape {tuple(r.shape)}, got {tuple(f.shape)}")
        out[f"{prefix}_r1_{name}"] = float((f[top] == f).float().mean())
    return out


def twin_accuracy(scores: torch.Tensor, prefix: str = "t2v") -> dict:
    """{"<prefix>_twin_acc": how often query i scores its own item above its twin}, twins being items
    2k and 2k+1 (a tie counts one half; 0.5 = the twins cannot be told apart)."""
    n = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != n or n % 2:
        raise ValueError(f"twin scores must be square with an even side, got {tuple(scores.shape)}")
    i = torch.arange(n, device=scores.device)
    own, twin = scores[i, i], scores[i, i ^ 1]
    return {f"{prefix}_twin_acc": float(((own > twin).float() + 0.5 * (own == twin).float()).mean())}


def mean_metrics(rows: list[dict]) -> dict:
    """Key-wise mean of metric dicts (several galleries)."""
    if not rows:
        raise ValueError("no metrics to average")
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0]}
