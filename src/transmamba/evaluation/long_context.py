"""Long-context retrieval: passkey (synthetic filler) and needle-in-a-haystack (Shakespeare).

A fact is put at a relative depth d of a context of about L tokens; the model is asked for it
and answers greedily; success = the answer's first generated characters contain the fact.
`retrieval_grid` returns accuracy per (L, depth), the data of a heat map, with `trials` prompts per
cell (TRIALS = 10 by default: one trial per cell cannot tell 0.67 from 1.0), each cell's and each
length's accuracy with its 95% Wilson interval (`evaluation.intervals`) and, given the teacher's
grid, "% of teacher" (None where the teacher scores 0). Any model given as
`answer_fn(prompt_ids "1 l", n_new) -> new ids` (ours and transformers teachers alike).
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from transmamba.evaluation.intervals import accuracy, pct_of_teacher

TRIALS = 10  # prompts per (length, depth) cell
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
LENGTHS = (1024, 2048, 4096, 8192)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_INTRO = "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n"
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
NEEDLE_QUESTION = "\nWhat is the secret word of the day? The secret word of the day is"
WORDS = ("lantern", "harbor", "velvet", "meadow", "copper", "thistle", "falcon", "ember")


def fit_tokens(tok, text: str, n_tokens: int) -> list[int]:
    """`text`'s tokens repeated (and cut) to exactly n_tokens."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n_tokens:
        ids = (ids * (n_tokens // max(len(ids), 1) + 1))
    return ids[:n_tokens]


def build_prompt(tok, kind: str, length: int, depth: float, haystack: str, rng: random.Random) -> tuple[list[int], str]:
    """(prompt ids of about `length` tokens, the expected answer) for kind "passkey" | "needle"."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if kind == "passkey":
        answer = str(rng.randint(10000, 99999))
        fact, intro, question, filler = f" The pass key is {answer}. Remember it. {answer} is the pass key. ", \
            PASSKEY_INTRO, PASSKEY_QUESTION, FILLER
    elif kind == "needle":
        answer = rng.choice(WORDS)
        fact, intro, question, filler = f" The secret word of the day is {answer}. ", "", NEEDLE_QUESTION, haystack
    else:
        raise ValueError(f"kind must be 'passkey' or 'needle', got {kind!r}")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, f_ids, q_ids = enc(intro), enc(fact), enc(question)
    room = max(length - len(head) - len(f_ids) - len(q_ids), 0)
    body = fit_tokens(tok, filler, room)
    cut = int(round(depth * len(body)))
    return head + body[:cut] + f_ids + body[cut:] + q_ids, answer


@torch.no_grad()
def retrieval_grid(answer_fn: Callable[[torch.Tensor, int], torch.Tensor], tok, kind: str, lengths=LENGTHS,
                   depths=DEPTHS, *, haystack: str = "", trials: int = TRIALS, n_new: int = 8, seed: int = 0,
                   teacher: dict | None = None) -> dict:
    """{"lengths", "depths", "acc": [[acc per depth] per length] (rows: lengths), "trials",
    "hits": [[...]], "ci": [[[lo, hi] per depth] per length] (95% Wilson), "by_length": [{"length",
    "acc", "ci", "hits", "n"}]}; with `teacher` (the teacher's grid on the same lengths and depths)
    also "pct_of_teacher" per cell and in each by_length entry (`compare_to_teacher`)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"retrieval_grid: trials must be an int >= 1, got {trials!r}")
    rng = random.Random(seed)
    hits = []
    for L in lengths:
        row = []
        for d in depths:
            k = 0
            for _ in range(trials):
                ids, answer = build_prompt(tok, kind, int(L), float(d), haystack, rng)
                new = answer_fn(torch.tensor([ids]), n_new)
                k += answer in tok.decode(new.tolist())
            row.append(k)
        hits.append(row)
    grid = {"lengths": [int(L) for L in lengths], "depths": [float(d) for d in depths],
            "acc": [[k / trials for k in row] for row in hits], "trials": trials, "hits": hits,
            "ci": [[accuracy(k, trials)["ci"] for k in row] for row in hits],
            "by_length": [{"length": int(L), **accuracy(sum(row), trials * len(row))} for L, row in zip(lengths, hits)]}
    return grid if teacher is None else compare_to_teacher(grid, teacher)


def compare_to_teacher(grid: dict, teacher: dict) -> dict:
    """`grid` with "pct_of_teacher": [[100 x student acc / teacher acc, None where the teacher scores
    0] per cell] and the same in each "by_length" entry. The grids must share lengths and depths."""
    if grid["lengths"] != teacher["lengths"] or grid["depths"] != teacher["depths"]:
        raise ValueError(f"student and teacher grids differ: lengths {grid['lengths']} vs {teacher['lengths']}, "
                         f"depths {grid['depths']} vs {teacher['depths']}")
    out = dict(grid)
    out["pct_of_teacher"] = [[pct_of_teacher(s, t) for s, t in zip(rs, rt)]
                             for rs, rt in zip(grid["acc"], teacher["acc"])]
    if "by_length" in grid and "by_length" in teacher:
        out["by_length"] = [{**s, "pct_of_teacher": pct_of_teacher(s["acc"], t["acc"])}
                            for s, t in zip(grid["by_length"], teacher["by_length"])]
    return out
