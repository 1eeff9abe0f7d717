"""Grid VQA questions (transmamba.data.grid_vqa): answers follow the labels, and the balancing holds
against a question-only and a label-only (class multiset = pooled, position-free image) baseline."""

import collections

import numpy as np
import pytest

from transmamba.data.grid_vqa import ANSWERS, QTYPES, answer_of, question_bank, sample_grid_questions


def _majority(keys_tr, a_tr, keys_te, a_te) -> float:
    """Accuracy on the test rows of the majority answer per key of the training rows."""
    table = collections.defaultdict(collections.Counter)
    for k, a in zip(keys_tr, a_tr):
        table[k][a] += 1
    fallback = collections.Counter(a_tr).most_common(1)[0][0]
    return float(np.mean([(table[k].most_common(1)[0][0] if k in table else fallback) == a
                          for k, a in zip(keys_te, a_te)]))


def test_answers_follow_the_labels():
    qs, types, params = question_bank()
    assert len(set(qs)) == len(qs)
    assert "Which cell holds the bag?" in qs and "How many tops are there?" in qs
    assert "Is the item left of the sneaker footwear?" in qs
    lab, q, a, t = sample_grid_questions(2000, seed=0)
    for i in range(2000):
        assert answer_of(lab[i], params[q[i]], types[q[i]]) == a[i]
        assert types[q[i]] == t[i]
    p = params[qs.index("Is the item left of the sneaker footwear?")]
    assert ANSWERS[answer_of([0, 7, 1, 2], p, 2)] == "no" and ANSWERS[answer_of([9, 7, 1, 2], p, 2)] == "yes"
    assert answer_of([7, 1, 1, 2], p, 2) == -1  # the sneaker has nothing on its left
    lab2, q2, a2, _ = sample_grid_questions(2000, seed=0)
    assert (lab == lab2).all() and (q == q2).all() and (a == a2).all()


def test_baselines_are_at_chance():
    lab, q, a, t = sample_grid_questions(30000, seed=0)
    lab2, q2, a2, t2 = sample_grid_questions(10000, seed=1)
    chance = {"where": 0.25, "count": 0.2, "relation": 0.5}
    multiset = lambda L: [tuple(sorted(r)) for r in L]  # what a pooled, position-free vector knows
    for ty, name in enumerate(QTYPES):
        s, s2 = t == ty, t2 == ty
        answers = np.bincount(a[s], minlength=len(ANSWERS))
        used = answers[answers > 0] / s.sum()
        assert np.allclose(used, chance[name], atol=0.02)  # balanced answers
        q_only = _majority(q[s], a[s], q2[s2], a2[s2])
        assert q_only < chance[name] + 0.03, (name, q_only)
        label_only = _majority(multiset(lab[s]), a[s], multiset(lab2[s2]), a2[s2])
        if name == "count":  # the grid shows a few counts; the question says which one (docstring)
            assert label_only < 0.85, label_only
        else:
            assert label_only < chance[name] + 0.03, (name, label_only)
    # with the question, the multiset still cannot say WHERE: relation yes / no grids have the same
    # distribution of class multisets for a given question
    rel = np.flatnonzero(t == 2)
    keys = [(int(q[i]), tuple(sorted(lab[i]))) for i in rel]
    rel2 = np.flatnonzero(t2 == 2)
    keys2 = [(int(q2[i]), tuple(sorted(lab2[i]))) for i in rel2]
    assert _majority(keys, a[rel], keys2, a2[rel2]) < 0.55
