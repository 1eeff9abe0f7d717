"""Recall@k and median rank (transmamba.evaluation.retrieval) against a brute-force reference."""

import numpy as np
import pytest
import torch

from transmamba.evaluation.retrieval import facet_r1, mean_metrics, ranks, recall_curve, retrieval_metrics


def brute_rank(s: np.ndarray, i: int) -> int:
    """Sort the row (ties: the right item last) and find it."""
    order = sorted(range(len(s)), key=lambda j: (-s[j], j == i))
    return order.index(i) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = 37
    t2v = torch.randint(0, 6, (n, n), generator=g).float()  # many ties
    v2t = torch.randn(n, n, generator=g)
    m = retrieval_metrics(t2v, v2t)
    r_t = [brute_rank(t2v[i].numpy(), i) for i in range(n)]
    r_v = [brute_rank(v2t[:, j].numpy(), j) for j in range(n)]
    assert ranks(t2v).tolist() == r_t
    for k in (1, 5, 10):
        assert m[f"t2v_r{k}"] == pytest.approx(np.mean(np.array(r_t) <= k))
        assert m[f"v2t_r{k}"] == pytest.approx(np.mean(np.array(r_v) <= k))
    assert m["t2v_medr"] == float(torch.tensor(r_t).float().median())
    assert recall_curve(torch.tensor(r_t), 3) == [pytest.approx(np.mean(np.array(r_t) <= k)) for k in (1, 2, 3)]


def test_perfect_and_worst_scores():
    eye = torch.eye(5) * 3
    m = retrieval_metrics(eye)
    assert m["t2v_r1"] == m["v2t_r1"] == 1.0 and m["t2v_medr"] == 1.0
    m = retrieval_metrics(-eye)
    assert m["t2v_r1"] == 0.0 and m["t2v_medr"] == 5.0
    assert mean_metrics([{"a": 1.0}, {"a": 0.0}]) == {"a": 0.5}
    with pytest.raises(ValueError, match="square"):
        ranks(torch.zeros(2, 3))


def test_facet_r1_hand_example():
    # items (class, direction): 0 = (0, 0), 1 = (0, 1), 2 = (1, 1), 3 = (1, 0)
    facets = {"item": torch.tensor([0, 0, 1, 1]), "direction": torch.tensor([0, 1, 1, 0])}
    s = torch.tensor([[5.0, 1, 1, 1],   # right
                      [1.0, 2, 9, 1],   # top-1 is 2: direction right, item wrong
                      [1.0, 1, 2, 2],   # tie with 3 counts against the query: item right, direction wrong
                      [1.0, 1, 1, 0]])  # best wrong: a three-way tie, argmax takes 0 (direction right)
    got = facet_r1(s, facets)
    assert got == {"t2v_r1_item": pytest.approx(2 / 4), "t2v_r1_direction": pytest.approx(3 / 4)}
    assert set(facet_r1(s, facets, prefix="dual_t2v")) == {"dual_t2v_r1_item", "dual_t2v_r1_direction"}
    with pytest.raises(ValueError, match="facet 'item'"):
        facet_r1(s, {"item": torch.zeros(3, dtype=torch.long)})


@pytest.mark.parametrize("seed", [0, 1])
def test_facet_r1_brute_force_and_bounds(seed):
    g = torch.Generator().manual_seed(seed)
    n = 40
    s = torch.randint(0, 5, (n, n), generator=g).float()
    f = {"a": torch.randint(0, 3, (n,), generator=g), "b": torch.randint(0, 4, (n,), generator=g)}
    got = facet_r1(s, f)
    r1 = retrieval_metrics(s)["t2v_r1"]
    for name, v in f.items():
        hits = 0
        for i in range(n):
            row = s[i].tolist()
            if all(row[j] < row[i] for j in range(n) if j != i):
                hits += 1
                continue
            best = max((row[j], -j) for j in range(n) if j != i)  # highest score, lowest index on ties
            hits += int(v[-best[1]] == v[i])
        assert got[f"t2v_r1_{name}"] == pytest.approx(hits / n)
        assert got[f"t2v_r1_{name}"] >= r1


def test_twin_accuracy_compares_each_query_with_its_twin_only():
    from transmamba.evaluation.retrieval import twin_accuracy

    s = torch.tensor([[2.0, 1.0, 9.0, 9.0],   # beats its twin (1): a win, whatever the others score
                      [3.0, 1.0, 0.0, 0.0],   # loses to its twin (0)
                      [0.0, 0.0, 5.0, 5.0],   # ties its twin (3): one half
                      [0.0, 0.0, 1.0, 4.0]])  # beats its twin (2)
    assert twin_accuracy(s) == {"t2v_twin_acc": 2.5 / 4}
    assert twin_accuracy(s, prefix="dual_t2v")["dual_t2v_twin_acc"] == 2.5 / 4
    with pytest.raises(ValueError, match="even side"):
        twin_accuracy(torch.zeros(3, 3))
