"""A synthetic in-context retrieval probe, teacher-forced, and the head ranking it drives.

Two tasks, built from any tokenizer and deterministic from a seed:

    kv        key-value lookup: N_PAIRS lines "key 4821: value apple." spread through filler text,
              the asked one at relative depth d, then "What is the value of key 4821? The value of
              key 4821 is" -> " apple"
    passkey   `evaluation.long_context.build_prompt` (a 5-digit pass key at depth d) -> " 48213"

Each prompt is exactly L tokens (when L leaves room for the facts). Score (teacher forcing, one
forward per batch, no generation): the answer's log-probability, summed over its tokens, and greedy
accuracy (every answer token is the argmax of its position: exactly when greedy decoding from the
prompt yields the answer first), with a 95% Wilson interval (`evaluation.intervals`).

`rank_heads(model, tok)` (and `head_report`, with the scores behind it) ranks a Switch student's
(or a teacher's, converted losslessly at full size) KV heads by this probe
(`adapt.head_ranking.head_ablation`: the drop in the answer's log-probability when one head alone
switches to its SSM path) or by their per-head switch cost (top-k KL on held-out text,
`adapt.head_ranking.head_switch_costs`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from transmamba.adapt.head_ranking import (AnswerBatch, answer_scores, head_ablation, head_switch_costs,
                                           kv_heads_per_layer, ranking, self_topk_windows)
from transmamba.evaluation.intervals import accuracy
from transmamba.evaluation.long_context import DEPTHS, FILLER, build_prompt, fit_tokens

KINDS = ("kv", "passkey")
N_PAIRS = 4
KV_INTRO = "Below are keys and their values, hidden in irrelevant text. Memorize them.\n"
KV_FACT = " key {key}: value {value}. "
KV_QUESTION = "\nWhat is the value of key {key}? The value of key {key} is"
VALUES = ("apple", "river", "stone", "cloud", "tiger", "piano", "candle", "forest", "silver", "garden", "rocket",
          "marble", "orange", "castle", "window", "dragon", "pepper", "winter", "button", "island")


@dataclass
class ProbeItem:
    kind: str
    length: int
    depth: float
    prompt: list[int]
    answer: list[int]  # the answer's tokens (with its leading space)
    answer_text: str


def build_kv_prompt(tok, length: int, depth: float, rng: random.Random,
                    n_pairs: int = N_PAIRS) -> tuple[list[int], str]:
    """(prompt ids of `length` tokens (more when it leaves no room for the facts), the value asked
    for): n_pairs distinct keys with distinct values in filler, the asked one at relative depth
    `depth`, the others at random depths."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if not 1 <= n_pairs <= len(VALUES):
        raise ValueError(f"n_pairs must be in [1, {len(VALUES)}], got {n_pairs}")
    keys = rng.sample(range(1000, 10000), n_pairs)
    values = rng.sample(VALUES, n_pairs)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    facts = [enc(KV_FACT.format(key=k, value=v)) for k, v in zip(keys, values)]
    head, q_ids = enc(KV_INTRO), enc(KV_QUESTION.format(key=keys[0]))
    room = max(length - len(head) - sum(map(len, facts)) - len(q_ids), 0)
    body = fit_tokens(tok, FILLER, room)
    cuts = [int(round(depth * len(body)))] + [rng.randint(0, len(body)) for _ in range(n_pairs - 1)]
    order = sorted(range(n_pairs), key=lambda i: (cuts[i], i))
    ids, at = list(head), 0
    for i in order:
        ids += body[at:cuts[i]] + facts[i]
        at = cuts[i]
    return ids + body[at:] + q_ids, values[0]


def probe_items(tok, kinds=KINDS, lengths=(1024,), depths=DEPTHS, trials: int = 2, seed: int = 0) -> list[ProbeItem]:
    """`trials` items per (kind, length, depth), deterministic from `seed`."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"probe kinds must be some of {KINDS}, got {list(kinds)}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"probe trials must be an int >= 1, got {trials!r}")
    if not lengths or any(int(L) < 1 for L in lengths):
        raise ValueError(f"probe lengths must be ints >= 1, got {list(lengths)}")
    rng = random.Random(seed)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    items = []
    for kind in kinds:
        for L in lengths:
            for d in depths:
                for _ in range(trials):
                    if kind == "kv":
                        ids, ans = build_kv_prompt(tok, int(L), float(d), rng)
                    else:
                        ids, ans = build_prompt(tok, "passkey", int(L), float(d), "", rng)
                    items.append(ProbeItem(kind, int(L), float(d), ids, enc(" " + ans), ans))
    return items


def probe_batches(items: list[ProbeItem], batch_size: int = 4, device=None) -> list[AnswerBatch]:
    """Items in order, `batch_size` at a time, as right-padded `AnswerBatch`es (pad id 0)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        seqs = [it.prompt + it.answer for it in chunk]
        l, a = max(map(len, seqs)), max(len(it.answer) for it in chunk)
        ids = torch.zeros(len(chunk), l, dtype=torch.long)
        pos = torch.zeros(len(chunk), a, dtype=torch.long)
        tgt = torch.zeros(len(chunk), a, dtype=torch.long)
        mask = torch.zeros(len(chunk), a, dtype=torch.bool)
        for r, (it, seq) in enumerate(zip(chunk, seqs)):
            n, p = len(it.answer), len(it.prompt)
            ids[r, :len(seq)] = torch.tensor(seq)
            pos[r, :n] = torch.arange(p - 1, p - 1 + n)
            tgt[r, :n] = torch.tensor(it.answer)
            mask[r, :n] = True
        lengths = torch.tensor([len(q) for q in seqs])
        out.append(AnswerBatch(*(t if device is None else t.to(device) for t in (ids, pos, tgt, mask, lengths))))
    return out


@torch.no_grad()
def score_probe(logits_fn, items: list[ProbeItem], batch_size: int = 1) -> dict:
    """A model's probe scores: {kind: {"acc", "ci", "hits", "n", "logp" (mean answer log-probability),
    "by_length": [{"length", "acc", "ci", "hits", "n", "logp"}]}}. `logits_fn(ids "b l") -> logits
    "b l V"` (e.g. `lambda x: hf_model(x).logits`)."""
    per = []  # (kind, length, logp, ok)
    for it_batch, batch in zip(_chunks(items, batch_size), probe_batches(items, batch_size)):
        logits = logits_fn(batch.ids)
        rows = torch.arange(len(batch))[:, None]
        lp, ok = answer_scores(logits[rows, batch.pos], batch)
        per += [(it.kind, it.length, float(a), bool(o)) for it, a, o in zip(it_batch, lp, ok)]
    out = {}
    for kind in dict.fromkeys(k for k, *_ in per):
        rows = [r for r in per if r[0] == kind]
        by_len = []
        for L in dict.fromkeys(r[1] for r in rows):
            sel = [r for r in rows if r[1] == L]
            by_len.append({"length": L, **accuracy(sum(r[3] for r in sel), len(sel)),
                           "logp": sum(r[2] for r in sel) / len(sel)})
        out[kind] = {**accuracy(sum(r[3] for r in rows), len(rows)), "logp": sum(r[2] for r in rows) / len(rows),
                     "by_length": by_len}
    return out


def _chunks(items, n):
    return [items[s:s + n] for s in range(0, len(items), n)]


def as_switch_lm(model, check_ids: torch.Tensor | None = None, seed: int = 0):
    """(our LM, whether it was converted): an `LM` as is; a transformers teacher converted at full
    size (`teachers.check.convert_full_size`, every TransPoint beyond the sequence is the
    teacher), refused unless lossless on `check_ids` (the probe's own tokens). The conversion's SSM
    parameters the teacher has no counterpart for (dt, A, the z gate) are drawn from `seed` (the
    global RNG is left as it was): a head's SSM path, and so its switch score, depends on them."""
    from transmamba.models.lm import LM

    if isinstance(model, LM):
        return model, False
    from transmamba.teachers.check import LOSSLESS_RTOL, compare_logits, convert_full_size

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = convert_full_size(model)
    if check_ids is not None:
        diff, scale = compare_logits(model, lm, check_ids)
        if not diff <= LOSSLESS_RTOL * scale:
            raise ValueError(f"the teacher ({model.config.model_type}) does not convert losslessly on the probe: max "
                             f"|logit diff| {diff:.3g} = {diff / scale:.2g} x the logits' scale (bound "
                             f"{LOSSLESS_RTOL:g}); its head ranking would not be the teacher's")
    return lm, True


def rank_heads(model, tok, **kw) -> list[tuple[int, int, float]]:
    """[(layer, kv_head, score)] of every KV head of `model` (an `LM` with Switch layers, or a
    transformers teacher, converted losslessly), most important first: `head_report`'s ranking
    (keywords as there)."""
    return head_report(model, tok, **kw)["ranking"]


def head_report(model, tok, *, by: str = "retrieval", kinds=KINDS, lengths=(1024,), depths=DEPTHS, trials: int = 2,
               seed: int = 0, transpoint: int | None = None, method: str = "ssm", batch_size: int = 2,
               texts: list[str] | None = None, top_k: int = 32) -> dict:
    """Rank the KV heads of `model` (an `LM` with Switch layers, or a transformers teacher, converted
    losslessly) (module docstring): {"by", "ranking": [(layer, kv_head, score)] most important first,
    "scores": [[score per KV head] per layer] (None for a layer without heads), "base": the
    all-attention model's probe scores, "seconds", ...}.

    by "retrieval": score = the drop in the answer's mean log-probability over the probe items
    (`trials` per kind, length and depth) when the head alone switches at `transpoint` (default 0)
    (method "ssm") or is mean-ablated (method "mean"); "acc_drop" beside it.
    by "switch_cost": score = the rise in top-k KL to the all-attention model on `trials` windows of
    `lengths[0]` tokens of `texts` (default: the held-out works) when the head alone switches at its
    TransPoint: `transpoint` if given, else the student's schedule (a teacher: 0).
    A teacher's conversion draws its SSM-only parameters from `seed` (`as_switch_lm`)."""
    if by not in ("retrieval", "switch_cost"):
        raise ValueError(f"--by must be 'retrieval' or 'switch_cost', got {by!r}")
    t0 = time.perf_counter()
    if by == "retrieval":
        items = probe_items(tok, kinds, lengths, depths, trials, seed)
        batches = probe_batches(items, batch_size)
        lm, converted = as_switch_lm(model, batches[0].ids, seed)
        res = head_ablation(lm, batches, transpoint=0 if transpoint is None else transpoint, method=method)
        scores = {hd: v["logp_drop"] for hd, v in res["heads"].items()}
        extra = {"base": res["base"], "n_items": res["n"], "method": method,
                 "acc_drop": {f"{i},{j}": v["acc_drop"] for (i, j), v in res["heads"].items()},
                 "transpoint": 0 if transpoint is None else transpoint}
    else:
        ids = text_windows(tok, texts, int(lengths[0]), trials)
        lm, converted = as_switch_lm(model, ids[0], seed)
        L = ids[0].shape[1]
        tps = ([transpoint] * lm.cfg.n_layers if transpoint is not None else
               [0] * lm.cfg.n_layers if converted else lm.transpoints_for(L))
        windows = self_topk_windows(lm, ids, top_k)
        from transmamba.teachers.cache import topk_kl

        scores = head_switch_costs(lm, windows, tps, lambda z, ti, tl: topk_kl(z, ti, tl))
        extra = {"transpoints": tps, "n_windows": len(ids), "window": L, "top_k": top_k}
    n_kv = kv_heads_per_layer(lm)
    grid = [[scores[(i, j)] for j in range(g)] if g else None for i, g in enumerate(n_kv)]
    return {"by": by, "ranking": ranking(scores), "scores": grid, "n_kv_heads": n_kv, "converted": converted,
            "seconds": round(time.perf_counter() - t0, 1), **extra}


def text_windows(tok, texts: list[str] | None, length: int, n: int) -> list[torch.Tensor]:
    """n windows "1 length" of consecutive tokens of `texts` (default: the held-out works)."""
    if texts is None:
        from transmamba.data.text import split_texts

        texts = split_texts("val")
    text = "\n".join(texts)[:16 * n * length]  # ample: a token is a few characters
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise ValueError(f"the text holds {len(ids)} tokens, fewer than {n} windows of {length}")
    return [torch.tensor([ids[i * length:(i + 1) * length]]) for i in range(n)]
