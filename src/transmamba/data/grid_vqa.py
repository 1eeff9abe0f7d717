"""Questions about 2x2 Fashion-MNIST grids that need the question to steer where the model reads.

Three types (`QTYPES`), answers from one shared vocabulary `ANSWERS` (11 words):

    where     "Which cell holds the bag?"                    -> top left | top right | bottom left | bottom right
    count     "How many tops are there?"                     -> 0 | 1 | 2 | 3 | 4
    relation  "Is the item left of the sneaker footwear?"    -> yes | no

The grid is built FOR its question (answer first, then cell classes consistent with it, then real
images of those classes, `fmnist_grids.pick_images`):

    where     the asked class X sits in one uniform cell, exactly once; the others are any class but X.
    count     k ~ U{0..4} cells, at uniform positions, hold a class of the group; the others a class
              outside it.
    relation  X appears once, in the right column for "left of" (left column for "right of"); its
              neighbour is in group G (yes) or not (no), with yes/no balanced. The other row holds
              one class of the opposite kind and one of any class (never X), so the multiset of
              classes has the same distribution for yes and for no.

So the question alone is at chance for every type (the answer is uniform given the question), and
the grid's class multiset (what a pooled, position-free image vector can know) is at chance for
where and relation, with or without the question. Counting needs the question to say WHAT to count;
the multiset alone still guesses counts well above chance (0.76 vs 0.2, since the answer is one
of the few counts a grid shows), while the question alone stays at 0.2: see
tests/data/test_grid_vqa.py, which measures these baselines.
"""

from __future__ import annotations

import numpy as np

from transmamba.data.fmnist_grids import CELLS
from transmamba.data.vqa_questions import CLASS_NAMES

QTYPES = ("where", "count", "relation")
ANSWERS = ("no", "yes", *CELLS, "0", "1", "2", "3", "4")
COUNT_GROUPS = (("tops", (0, 2, 6)), ("pieces of footwear", (5, 7, 9)))
RELATION_GROUPS = (("footwear", (5, 7, 9)), ("a top", (0, 2, 6)))
SIDES = ("left", "right")
N_CLASSES = len(CLASS_NAMES)


def question_bank() -> tuple[list[str], np.ndarray, list[dict]]:
    """(questions, question type index "n_q", parameters of each question)."""
    qs, types, params = [], [], []
    for c, name in enumerate(CLASS_NAMES):
        qs.append(f"Which cell holds the {name}?")
        types.append(0)
        params.append({"cls": c})
    for g, (gname, members) in enumerate(COUNT_GROUPS):
        qs.append(f"How many {gname} are there?")
        types.append(1)
        params.append({"group": members})
    for s, side in enumerate(SIDES):
        for c, name in enumerate(CLASS_NAMES):
            for gname, members in RELATION_GROUPS:
                qs.append(f"Is the item {side} of the {name} {gname}?")
                types.append(2)
                params.append({"side": side, "cls": c, "group": members})
    return qs, np.array(types), params


def _pick(rng, allowed) -> int:
    allowed = np.asarray(sorted(allowed))
    return int(allowed[rng.integers(0, len(allowed))])


def answer_of(cell_labels, p: dict, qtype: int) -> int:
    """The ANSWERS index for a question (type, parameters) about a grid with these cell labels;
    -1 when the question does not apply (the class missing or not unique, no neighbour)."""
    lab = [int(v) for v in cell_labels]
    if qtype == 1:
        return ANSWERS.index(str(sum(v in p["group"] for v in lab)))
    if lab.count(p["cls"]) != 1:
        return -1
    k = lab.index(p["cls"])
    if qtype == 0:
        return ANSWERS.index(CELLS[k])
    col = k % 2
    if (p["side"] == "left") != (col == 1):
        return -1
    neighbour = lab[k - 1] if p["side"] == "left" else lab[k + 1]
    return int(neighbour in p["group"])


def sample_grid_questions(n: int, *, seed: int = 0, type_probs=(1 / 3, 1 / 3, 1 / 3)
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cell labels int64 "n 4", question index "n", answer index into ANSWERS "n", type "n")."""
    qs, types, params = question_bank()
    rng = np.random.default_rng(seed)
    everything = set(range(N_CLASSES))
    labels = np.empty((n, 4), dtype=np.int64)
    q_idx = np.empty(n, dtype=np.int64)
    ans = np.empty(n, dtype=np.int64)
    qtype = rng.choice(len(QTYPES), size=n, p=np.asarray(type_probs) / np.sum(type_probs))
    by_type = [np.flatnonzero(types == t) for t in range(len(QTYPES))]
    for i in range(n):
        t = int(qtype[i])
        q = int(by_type[t][rng.integers(0, len(by_type[t]))])
        p = params[q]
        lab = [0] * 4
        if t == 0:
            x, pos = p["cls"], int(rng.integers(0, 4))
            for k in range(4):
                lab[k] = x if k == pos else _pick(rng, everything - {x})
        elif t == 1:
            k_in = int(rng.integers(0, 5))
            inside = set(rng.permutation(4)[:k_in].tolist())
            g = set(p["group"])
            for k in range(4):
                lab[k] = _pick(rng, g if k in inside else everything - g)
        else:
            x, g, yes = p["cls"], set(p["group"]), bool(rng.integers(0, 2))
            row = int(rng.integers(0, 2))
            kx = 2 * row + (1 if p["side"] == "left" else 0)
            kn = kx - 1 if p["side"] == "left" else kx + 1
            lab[kx] = x
            lab[kn] = _pick(rng, (g if yes else everything - g) - {x})
            other = [2 * (1 - row), 2 * (1 - row) + 1]
            if rng.integers(0, 2):
                other.reverse()
            lab[other[0]] = _pick(rng, (everything - g if yes else g) - {x})
            lab[other[1]] = _pick(rng, everything - {x})
        a = answer_of(lab, p, t)
        assert a >= 0, (lab, p, t)
        labels[i], q_idx[i], ans[i] = lab, q, a
    return labels, q_idx, ans, qtype
