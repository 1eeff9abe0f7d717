"""Long-context retrieval grids (`evaluation.long_context`) with their uncertainty: the Wilson interval
against published values, per-cell and per-length accuracy with intervals, "% of teacher"."""

import pytest
import torch
from tiny_fixtures import tiny_tokenizer

from transmamba.evaluation.intervals import accuracy, pct_of_teacher, wilson_interval
from transmamba.evaluation.long_context import build_prompt, compare_to_teacher, retrieval_grid


def test_wilson_interval_matches_known_values():
    # Newcombe (1998), Statistics in Medicine 17: 857-872, method 3: 81/263 -> 0.2553-0.3662
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # never a point at 0/n
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    lo, hi = wilson_interval(7, 10)
    assert lo < 0.67 < 1.0 > hi - 0.2  # 10 trials cannot tell 0.67 from 0.7 ...
    assert wilson_interval(67, 100)[1] < wilson_interval(100, 100)[0]  # ... 100 can tell 0.67 from 1.0
    for k, n in ((-1, 5), (6, 5), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    assert accuracy(3, 4) == {"acc": 0.75, "ci": list(wilson_interval(3, 4)), "hits": 3, "n": 4}
    assert pct_of_teacher(0.5, 0.8) == pytest.approx(62.5) and pct_of_teacher(0.5, 0.0) is None


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_grid_counts_trials_per_cell_with_intervals_and_pct_of_teacher(tok):
    asked = []

    def oracle(ids, n_new):  # answers right when the fact sits in the first 55% of the prompt
        text = tok.decode(ids[0].tolist())
        asked.append(ids.shape[1])
        key = text.split("The pass key is ", 1)[1][:5]
        right = text.index("The pass key is ") < 0.55 * len(text)
        return torch.tensor(tok(" " + (key if right else "00000"), add_special_tokens=False)["input_ids"])

    g = retrieval_grid(oracle, tok, "passkey", [300, 400], [0.0, 0.25, 1.0], trials=4, seed=1)
    assert len(asked) == 2 * 3 * 4 and g["trials"] == 4
    assert g["hits"] == [[4, 4, 0], [4, 4, 0]] and g["acc"] == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert g["ci"][0][2] == pytest.approx(list(wilson_interval(0, 4)))
    assert g["by_length"][1] == {"length": 400, **accuracy(8, 12)}
    assert "pct_of_teacher" not in g
    t = retrieval_grid(oracle, tok, "passkey", [300, 400], [0.0, 0.25, 1.0], trials=4, seed=2)
    t["acc"][0] = [0.5, 1.0, 0.0]
    t["by_length"][0]["acc"] = 0.5
    both = compare_to_teacher(g, t)
    assert both["pct_of_teacher"][0] == [200.0, 100.0, None]  # None: the teacher scores 0
    assert both["by_length"][0]["pct_of_teacher"] == pytest.approx(100 * (8 / 12) / 0.5)
    again = retrieval_grid(oracle, tok, "passkey", [300, 400], [0.0, 0.25, 1.0], trials=4, seed=1, teacher=t)
    assert again["pct_of_teacher"] == both["pct_of_teacher"]
    with pytest.raises(ValueError, match="differ"):
        compare_to_teacher(g, {**t, "lengths": [300, 500]})
    with pytest.raises(ValueError, match="trials"):
        retrieval_grid(oracle, tok, "passkey", [120], [0.0], trials=0)


def test_passkey_prompt_puts_the_fact_at_its_depth(tok):
    import random

    ids, key = build_prompt(tok, "passkey", 300, 1.0, "", random.Random(0))
    text = tok.decode(ids)
    assert len(ids) == 300 and text.index(key) > len(text) * 0.7
