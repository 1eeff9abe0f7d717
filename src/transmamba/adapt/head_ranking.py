"""Which KV heads keep attention: rank each Switch layer's KV heads by what losing its attention costs.

A head-level hybrid (`modules.schedule.HeadHybrid`) keeps a few KV heads (with their query heads)
on attention at every position and lets the rest switch. This module scores every KV head of a
Switch LM, one head at a time, everything else attention-only (on a lossless conversion of a
teacher that is the teacher itself):

    retrieval ablation   the drop in the answer's log-probability (and teacher-forced greedy accuracy)
                         on a retrieval probe (`evaluation.retrieval_probe` builds it) when that KV
                         head alone
                           method "ssm":  switches to its SSM path at P (default 0: SSM at every
                                          position; head-level TransPoints, `HeadTransPoints`), what
                                          a converted student keeps of it, or
                           method "mean": has its attention output (out_proj's input of its query
                                          heads) replaced by its mean over the row's positions
    switch cost          the rise in top-k KL to the all-attention model when that head alone
                         switches at its TransPoint (`adapt.attention_layers.switch_costs`, per head)

Ablating head j of layer i changes nothing below layer i: each probe batch runs the all-attention
model once, keeps the residual stream entering every layer, and each ablation runs only blocks
i..L-1 from it (`LM.blocks_from`), and the vocabulary head only at the answer positions.

    ranking(scores)                               [(layer, kv_head, score)], most important first
    kept_heads_schedule(base, ranking, k, g)      the head_hybrid schedule keeping the top k
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from transmamba.modules.schedule import ATTENTION_ONLY

METHODS = ("ssm", "mean")


@dataclass
class AnswerBatch:
    """Teacher-forced answers of a batch of prompts (right-padded: a causal model's outputs at a
    row's own positions do not see the padding after them).

    ids "b l" int64   prompt + answer tokens, right-padded with any id
    pos "b a" int64   the positions whose next-token logits predict the answer tokens
    tgt "b a" int64   the answer tokens (0 where mask is False)
    mask "b a" bool   which of the a answer slots a row uses (answers differ in length)
    lengths "b"       each row's own length (prompt + answer, without the padding)
    """

    ids: torch.Tensor
    pos: torch.Tensor
    tgt: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self):
        b = self.ids.shape[0]
        if self.ids.dim() != 2 or self.ids.is_floating_point():
            raise ValueError(f"AnswerBatch.ids must be an integer tensor (b, l), got shape {tuple(self.ids.shape)} "
                             f"and dtype {self.ids.dtype}")
        if self.pos.shape != self.tgt.shape or self.pos.shape != self.mask.shape or self.pos.shape[0] != b:
            raise ValueError(f"AnswerBatch: pos {tuple(self.pos.shape)}, tgt {tuple(self.tgt.shape)} and mask "
                             f"{tuple(self.mask.shape)} must all be (b={b}, a)")
        if tuple(self.lengths.shape) != (b,):
            raise ValueError(f"AnswerBatch.lengths must have shape ({b},), got {tuple(self.lengths.shape)}")
        if not bool(self.mask.any(1).all()):
            raise ValueError("AnswerBatch: every row needs at least one answer token")
        if self.pos.numel() and (int(self.pos.min()) < 0 or int(self.pos.max()) >= self.ids.shape[1]):
            raise ValueError(f"AnswerBatch.pos outside [0, {self.ids.shape[1]})")

    def __len__(self) -> int:
        return self.ids.shape[0]


def answer_scores(logits: torch.Tensor, batch: AnswerBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """logits "b a V" at `batch.pos` -> (the answer's log-probability "b" (summed over its tokens),
    whether greedy decoding yields it "b" bool: every answer token the argmax of its position)."""
    logp = F.log_softmax(logits.double() if logits.dtype == torch.float64 else logits.float(), -1)
    tok = logp.gather(-1, batch.tgt[..., None])[..., 0]
    lp = (tok * batch.mask).sum(1)
    ok = ((logits.argmax(-1) == batch.tgt) | ~batch.mask).all(1)
    return lp, ok


def lm_answer_scores(model, x_L: torch.Tensor, batch: AnswerBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """`answer_scores` of an `LM`'s last residual stream x_L "b l d": the final norm and the
    vocabulary head run only at the answer positions."""
    rows = torch.arange(len(batch), device=x_L.device)[:, None]
    return answer_scores(model.head(x_L[rows, batch.pos]), batch)


def kv_heads_per_layer(model) -> list[int]:
    """The KV heads of each layer that takes a TransPoint (a Switch layer), 0 for any other layer."""
    return [block.mixer.g if getattr(block, "takes_transpoint", False) else 0 for block in model.blocks]


def all_heads(model) -> list[tuple[int, int]]:
    """(layer, kv_head) of every KV head of every Switch layer; ValueError when there is none."""
    heads = [(i, j) for i, g in enumerate(kv_heads_per_layer(model)) for j in range(g)]
    if not heads:
        raise ValueError("head ranking needs a model with TransMamba-Switch layers (arch 'transmamba'); this one "
                         "has none")
    return heads


def one_head_transpoints(n_kv: list[int], layer: int, head: int, P: int) -> list:
    """Per-layer TransPoints with every head attention-only except KV head `head` of `layer` at P
    (a list of that layer's per-head TransPoints; one int when the layer has one KV head)."""
    tps: list = [ATTENTION_ONLY] * len(n_kv)
    if not 0 <= head < n_kv[layer]:
        raise ValueError(f"KV head {head} out of range for layer {layer} with {n_kv[layer]} KV heads")
    per = [ATTENTION_ONLY] * n_kv[layer]
    per[head] = int(P)
    tps[layer] = per if len(per) > 1 else per[0]
    return tps


@contextmanager
def mean_ablated(mixer, head: int, lengths: torch.Tensor):
    """While active, KV head `head` of this Switch mixer (its query heads) outputs, at every position
    of row r, its mean output over the row's first lengths[r] positions (out_proj's input replaced)."""
    r = mixer.h // mixer.g
    lo, hi = head * r * mixer.p, (head + 1) * r * mixer.p

    def hook(_module, args):
        (y,) = args
        t = torch.arange(y.shape[1], device=y.device)
        keep = (t[None, :] < lengths.to(y.device)[:, None]).to(y.dtype)[..., None]  # "b l 1"
        seg = y[..., lo:hi]
        mean = (seg * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
        y = y.clone()
        y[..., lo:hi] = mean.expand_as(seg)
        return (y,)

    handle = mixer.out_proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def head_ablation(model, batches: Iterable[AnswerBatch], *, transpoint: int = 0, method: str = "ssm",
                  heads: list[tuple[int, int]] | None = None) -> dict:
    """Ablate each KV head alone (module docstring) on the probe `batches`:
    {"base": {"logp", "acc"}, "heads": {(layer, kv_head): {"logp_drop", "acc_drop"}}, "n"}: means
    over the probe's items; drop = all-attention value - ablated value. `heads`: those to ablate
    (None: every KV head of every Switch layer); `transpoint`: the P a switched head takes."""
    if method not in METHODS:
        raise ValueError(f"ablation method must be one of {METHODS}, got {method!r}")
    if isinstance(transpoint, bool) or not isinstance(transpoint, int) or transpoint < 0:
        raise ValueError(f"transpoint must be an int >= 0, got {transpoint!r}")
    n_kv = kv_heads_per_layer(model)
    heads = all_heads(model) if heads is None else list(heads)
    att = [ATTENTION_ONLY] * len(n_kv)
    base_lp = base_ok = 0.0
    sums = {hd: [0.0, 0.0] for hd in heads}
    n = 0
    for batch in batches:
        x_L, hidden = model.trunk(batch.ids, att, return_hidden=True)
        lp0, ok0 = lm_answer_scores(model, x_L, batch)
        base_lp, base_ok, n = base_lp + float(lp0.sum()), base_ok + float(ok0.sum()), n + len(batch)
        for i, j in heads:
            if method == "ssm":
                x = model.blocks_from(hidden[i], i, one_head_transpoints(n_kv, i, j, transpoint))
            else:
                if not 0 <= j < n_kv[i]:
                    raise ValueError(f"KV head {j} out of range for layer {i} with {n_kv[i]} KV heads")
                with mean_ablated(model.blocks[i].mixer, j, batch.lengths):
                    x = model.blocks_from(hidden[i], i, att)
            lp, ok = lm_answer_scores(model, x, batch)
            sums[(i, j)][0] += float((lp0 - lp).sum())
            sums[(i, j)][1] += float(ok0.sum() - ok.sum())
    if n == 0:
        raise ValueError("head ablation needs at least one probe batch")
    return {"base": {"logp": base_lp / n, "acc": base_ok / n}, "n": n,
            "heads": {hd: {"logp_drop": s[0] / n, "acc_drop": s[1] / n} for hd, s in sums.items()}}


def head_transpoint(transpoints: list, layer: int, head: int) -> int:
    """Head `head`'s TransPoint in layer `layer` of a per-layer list (an int, or one per KV head)."""
    P = transpoints[layer]
    return int(P[head]) if isinstance(P, (list, tuple)) else int(P)


@torch.no_grad()
def head_switch_costs(model, windows: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], transpoints: list,
                      kl: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> dict:
    """`adapt.attention_layers.switch_costs` per KV head: {(layer, kv_head): cost}, cost = mean over
    `windows` (x "b l", topk_idx "b l k", topk_logp "b l k") of KL_topk(only that head at its P,
    every other head attention) - KL_topk(every head attention). `transpoints`: per layer an int or
    one per KV head (a schedule's output). A head whose P >= l never switches: its cost is 0."""
    windows = list(windows)
    if not windows:
        raise ValueError("head_switch_costs needs at least one window")
    n_kv = kv_heads_per_layer(model)
    if len(transpoints) != len(n_kv):
        raise ValueError(f"head_switch_costs: {len(transpoints)} transpoints for {len(n_kv)} layers")
    heads = all_heads(model)
    seq_len = windows[0][0].shape[1]
    switched = [(i, j) for i, j in heads if head_transpoint(transpoints, i, j) < seq_len]
    att = [ATTENTION_ONLY] * len(n_kv)
    base, kls = 0.0, {hd: 0.0 for hd in switched}

    def kl_of(x_L, ti, tl):
        z = model.head(x_L)
        return float(kl(z if z.dtype == torch.float64 else z.float(), ti, tl))

    for x, ti, tl in windows:
        x_L, hidden = model.trunk(x, att, return_hidden=True)
        base += kl_of(x_L, ti, tl)
        for i, j in switched:
            tps = one_head_transpoints(n_kv, i, j, head_transpoint(transpoints, i, j))
            kls[(i, j)] += kl_of(model.blocks_from(hidden[i], i, tps), ti, tl)
    return {hd: (kls[hd] - base) / len(windows) if hd in kls else 0.0 for hd in heads}


@torch.no_grad()
def self_topk_windows(model, ids: Iterable[torch.Tensor], top_k: int = 32) -> list:
    """Windows (x, topk_idx, topk_logp) whose targets are the model's own all-attention top-k
    log-probabilities (for a lossless conversion: the teacher's), for `head_switch_costs`."""
    out = []
    for x in ids:
        z = model.head(model.trunk(x, ATTENTION_ONLY)[0])
        logp = F.log_softmax(z if z.dtype == torch.float64 else z.float(), -1)
        v, i = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
        out.append((x, i, v))
    return out


def ranking(scores: dict) -> list[tuple[int, int, float]]:
    """{(layer, kv_head): score} -> [(layer, kv_head, score)], highest score first (ties: lower layer,
    then lower head, first)."""
    return sorted(((i, j, float(s)) for (i, j), s in scores.items()), key=lambda r: (-r[2], r[0], r[1]))


def random_ranking(n_kv_heads: list[int], seed: int) -> list[tuple[int, int, float]]:
    """Every (layer, kv_head) in a random order drawn from `seed` (the control for a ranking: keeping
    the first K is keeping K heads at random), scored n-1 ... 0 so that `ranking` order is kept."""
    import random

    heads = [(i, j) for i, n in enumerate(n_kv_heads) for j in range(n)]
    random.Random(seed).shuffle(heads)
    return [(i, j, float(len(heads) - 1 - r)) for r, (i, j) in enumerate(heads)]


def read_ranking(path, n_kv_heads: list[int]) -> list[tuple[int, int, float]]:
    """The ranking of a ranking.json (`transmamba heads`: {"ranking": [[layer, kv_head, score], ...]},
    most important first), checked against a model with `n_kv_heads` KV heads per layer: ValueError /
    FileNotFoundError naming the file and the bad entry."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"head ranking {path}: no such file (write one with `transmamba heads`)")
    try:
        rows = json.loads(p.read_text())["ranking"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"head ranking {path}: not a ranking.json of `transmamba heads` ({type(e).__name__}: {e})") from None
    out, seen = [], set()
    for k, r in enumerate(rows if isinstance(rows, list) else [None]):
        ok = isinstance(r, (list, tuple)) and len(r) == 3 and all(isinstance(v, (int, float)) for v in r)
        if not ok or not (0 <= r[0] < len(n_kv_heads) and r[0] == int(r[0])) or not (
                0 <= r[1] < n_kv_heads[int(r[0])] and r[1] == int(r[1])):
            raise ValueError(f"head ranking {path}: entry {k} {r!r} is not [layer, kv_head, score] of this model "
                             f"({len(n_kv_heads)} layers x {n_kv_heads[0] if n_kv_heads else 0} KV heads)")
        if (int(r[0]), int(r[1])) in seen:
            raise ValueError(f"head ranking {path}: entry {k} repeats head {[int(r[0]), int(r[1])]}")
        seen.add((int(r[0]), int(r[1])))
        out.append((int(r[0]), int(r[1]), float(r[2])))
    return out


def kept_heads_schedule(base_spec, ranked: list, k: int, n_kv_heads) -> dict:
    """The `head_hybrid` schedule spec keeping the k highest-ranked KV heads of `ranked` ([(layer,
    kv_head, score)] most important first, `ranking`) on attention at every position; every other
    head follows `base_spec`. n_kv_heads: the KV heads per layer (an int, or one per layer)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(ranked):
        raise ValueError(f"keep_heads must be an int in [0, {len(ranked)}] (the ranked KV heads), got {k!r}")
    kept = sorted([int(r[0]), int(r[1])] for r in ranked[:k])
    return {"name": "head_hybrid", "base": base_spec, "kept_heads": kept, "n_kv_heads": n_kv_heads}
