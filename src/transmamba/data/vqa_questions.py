"""Templated yes/no questions about Fashion-MNIST images, answered from the labels.

Class questions ("Is this a sneaker?", "Does the picture show a coat?") and attribute questions
("Is this worn on the feet?", "Is this a top?"). `question_bank()` gives the questions and
`answers[q, c]`, the answer to question q for class c; `sample_questions` draws one question per
image with exactly balanced answers (half yes, shuffled): given the answer, the question is drawn
uniformly among the questions of the drawn type (class with probability 1 - attr_frac) that have
that answer for the image's class. So neither the question alone nor the image alone predicts the
answer better than chance.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle boot")
CLASS_TEMPLATES = ("Is this {article} {name}?", "Does the picture show {article} {name}?")
ATTRIBUTES = (  # (question, classes for which the answer is yes)
    ("Is this worn on the feet?", (5, 7, 9)),
    ("Is this footwear?", (5, 7, 9)),
    ("Is this worn on the upper body?", (0, 2, 4, 6)),
    ("Is this a top?", (0, 2, 6)),
    ("Is this a garment?", (0, 1, 2, 3, 4, 6)),
    ("Can you carry things in this?", (8,)),
)


def _article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def question_bank() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(questions, answers bool "n_q 10", is_attribute bool "n_q").

    answers[q, c] = 1 iff question q is answered "yes" for an item of class c."""
    questions, rows, is_attr = [], [], []
    for t in CLASS_TEMPLATES:
        for c, name in enumerate(CLASS_NAMES):
            questions.append(t.format(article=_article(name), name=name))
            rows.append(np.arange(len(CLASS_NAMES)) == c)
            is_attr.append(False)
    for q, yes in ATTRIBUTES:
        questions.append(q)
        rows.append(np.isin(np.arange(len(CLASS_NAMES)), yes))
        is_attr.append(True)
    return questions, np.stack(rows), np.array(is_attr)


def sample_questions(labels: np.ndarray, answers: np.ndarray, is_attr: np.ndarray, *,
                     attr_frac: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(question index "n", answer "n" in {0, 1}) for images with class `labels` "n".

    Exactly ceil(n/2) answers are yes (shuffled). Item i asks an attribute question with
    probability attr_frac (else a class question), drawn uniformly among the questions q of that
    type with answers[q, labels[i]] == answer_i."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {labels.shape}")
    if not 0.0 <= attr_frac <= 1.0:
        raise ValueError(f"attr_frac must be in [0, 1], got {attr_frac}")
    if labels.size and (labels.min() < 0 or labels.max() >= answers.shape[1]):
        raise ValueError(f"labels must be in [0, {answers.shape[1]}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    rng = np.random.default_rng(seed)
    n = len(labels)
    ans = rng.permutation(np.arange(n) < (n + 1) // 2).astype(np.int64)
    use_attr = rng.random(n) < attr_frac
    q_idx = np.empty(n, dtype=np.int64)
    for i in range(n):
        ok = np.flatnonzero((answers[:, labels[i]] == bool(ans[i])) & (is_attr == use_attr[i]))
        q_idx[i] = rng.choice(ok)
    return q_idx, ans
