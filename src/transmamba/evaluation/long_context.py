"""Long-context retrieval: passkey (synthetic filler) and needle-in-a-haystack (Shakespeare).

A fact is put at a relative depth d of a context of about L tokens; the model is asked for it
and answers greedily; success = the answer's first generated characters contain the fact.
`retrieval_grid` returns accuracy per (L, depth), the data of a heat map. Any model given as
`answer_fn(prompt_ids "1 l", n_new) -> new ids` (ours and transformers teachers alike).
"""

from __future__ import annotations

import random
from typing import Callable

import torch

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_INTRO = "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n"
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
NEEDLE_QUESTION = "\nWhat is the secret word of the day? The secret word of the day is"
WORDS = ("lantern", "harbor", "velvet", "meadow", "copper", "thistle", "falcon", "ember")


def _fit(tok, text: str, n_tokens: int) -> list[int]:
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
    body = _fit(tok, filler, room)
    cut = int(round(depth * len(body)))
    return head + body[:cut] + f_ids + body[cut:] + q_ids, answer


@torch.no_grad()
def retrieval_grid(answer_fn: Callable[[torch.Tensor, int], torch.Tensor], tok, kind: str, lengths, depths, *,
                   haystack: str = "", trials: int = 1, n_new: int = 8, seed: int = 0) -> dict:
    """{"lengths", "depths", "acc": [[acc per depth] per length]} (rows: lengths)."""
    rng = random.Random(seed)
    acc = []
    for L in lengths:
        row = []
        for d in depths:
            hits = 0
            for _ in range(trials):
                ids, answer = build_prompt(tok, kind, int(L), float(d), haystack, rng)
                new = answer_fn(torch.tensor([ids]), n_new)
                hits += answer in tok.decode(new.tolist())
            row.append(hits / trials)
        acc.append(row)
    return {"lengths": [int(L) for L in lengths], "depths": [float(d) for d in depths], "acc": acc}
