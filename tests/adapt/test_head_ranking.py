"""Per-KV-head ablation scores (`adapt.head_ranking`): each equals a brute-force full forward with that
head alone at its P, a head that cannot matter scores exactly 0, and the kept-heads schedule keeps
the top k. Tiny random Switch LMs in float64."""

import pytest
import torch

from transmamba.adapt.attention_layers import switch_costs
from transmamba.adapt.head_ranking import (AnswerBatch, answer_scores, head_ablation, head_switch_costs,
                                           kept_heads_schedule, one_head_transpoints, ranking, self_topk_windows)
from transmamba.teachers.cache import topk_kl
from transmamba.models.lm import LM, LMConfig
from transmamba.modules.schedule import ATTENTION_ONLY, make_schedule


def _lm(n_kv=2, seed=0, n_layers=3):
    torch.manual_seed(seed)
    lm = LM(LMConfig(vocab_size=50, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv, head_dim=8,
                     d_state=8, chunk_size=8, schedule="attention", conv_activation=None,
                     init_std=0.2)).double().eval()
    with torch.no_grad():  # a random Switch layer's SSM path is far from its attention path
        for b in lm.blocks:
            b.mixer.dt_bias.uniform_(-1, 1)
    return lm


def _batch(seed=1, b=3, lens=(20, 17, 23), ans=(2, 3, 1)):
    g = torch.Generator().manual_seed(seed)
    l = max(lens)
    ids = torch.randint(0, 50, (b, l), generator=g)
    a = max(ans)
    pos = torch.zeros(b, a, dtype=torch.long)
    tgt = torch.zeros(b, a, dtype=torch.long)
    mask = torch.zeros(b, a, dtype=torch.bool)
    for r, (L, n) in enumerate(zip(lens, ans)):
        pos[r, :n] = torch.arange(L - n - 1, L - 1)
        tgt[r, :n] = ids[r, L - n:L]
        mask[r, :n] = True
    return AnswerBatch(ids, pos, tgt, mask, torch.tensor(lens))


def _brute(lm, batch, tps):
    logits = lm(batch.ids, transpoints=tps)[0]
    return answer_scores(logits[torch.arange(len(batch))[:, None], batch.pos], batch)


@torch.no_grad()
def test_each_head_equals_a_full_forward_with_that_head_alone_at_P():
    lm, batches = _lm(), [_batch(1), _batch(2, b=2, lens=(12, 19), ans=(1, 2))]
    for P in (0, 7):
        res = head_ablation(lm, batches, transpoint=P)
        assert set(res["heads"]) == {(i, j) for i in range(3) for j in range(2)} and res["n"] == 5
        drops = []
        for (i, j), v in res["heads"].items():
            lp0 = torch.cat([_brute(lm, b, ATTENTION_ONLY)[0] for b in batches])
            ok0 = torch.cat([_brute(lm, b, ATTENTION_ONLY)[1] for b in batches])
            out = [_brute(lm, b, one_head_transpoints([2, 2, 2], i, j, P)) for b in batches]
            lp, ok = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
            assert v["logp_drop"] == pytest.approx(float((lp0 - lp).mean()), abs=1e-10)
            assert v["acc_drop"] == pytest.approx(float(ok0.double().mean() - ok.double().mean()), abs=1e-12)
            drops.append(v["logp_drop"])
        assert res["base"]["logp"] == pytest.approx(float(lp0.mean()), abs=1e-10)
        assert max(abs(d) for d in drops) > 1e-3  # switching a head does change the answer


def test_a_head_at_attention_only_or_with_no_output_scores_zero():
    lm, batch = _lm(), _batch()
    res = head_ablation(lm, [batch], transpoint=ATTENTION_ONLY)
    assert all(v["logp_drop"] == 0.0 and v["acc_drop"] == 0.0 for v in res["heads"].values())
    with torch.no_grad():  # KV head 0 of layer 1 (query heads 0, 1: out_proj columns 0..15) writes nothing
        lm.blocks[1].mixer.out_proj.weight[:, :16] = 0
    for method in ("ssm", "mean"):
        res = head_ablation(lm, [batch], transpoint=0, method=method)
        assert abs(res["heads"][(1, 0)]["logp_drop"]) < 1e-12, method
        assert abs(res["heads"][(1, 1)]["logp_drop"]) > 1e-4, method  # its neighbour does matter
    assert ranking({k: v["logp_drop"] for k, v in res["heads"].items()})[-1][:2] != (1, 1)


def test_mean_ablation_of_a_single_position_changes_nothing():
    """The mean over one position is that position's own output: the ablation is the identity."""
    lm = _lm()
    batch = AnswerBatch(torch.tensor([[5], [7]]), torch.tensor([[0], [0]]), torch.tensor([[3], [4]]),
                        torch.tensor([[True], [True]]), torch.tensor([1, 1]))
    res = head_ablation(lm, [batch], method="mean")
    assert all(abs(v["logp_drop"]) < 1e-12 for v in res["heads"].values())
    res = head_ablation(lm, [_batch()], method="mean")  # over many positions it does change the answer
    assert max(abs(v["logp_drop"]) for v in res["heads"].values()) > 1e-3


@torch.no_grad()
def test_head_switch_costs_equal_a_full_forward_and_the_layer_costs_with_one_kv_head():
    lm = _lm()
    ids = [torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    windows = self_topk_windows(lm, ids, top_k=8)
    kl = lambda z, ti, tl: topk_kl(z, ti, tl)  # noqa: E731
    tps = [0, [3, 40], 40]  # layer 2 never switches within 16 tokens; layer 1 head 1 neither
    costs = head_switch_costs(lm, windows, tps, kl)
    assert costs[(2, 0)] == costs[(2, 1)] == costs[(1, 1)] == 0.0
    for i, j, P in ((0, 0, 0), (0, 1, 0), (1, 0, 3)):
        base = sum(float(kl(lm(x, transpoints=ATTENTION_ONLY)[0], ti, tl)) for x, ti, tl in windows)
        sw = sum(float(kl(lm(x, transpoints=one_head_transpoints([2, 2, 2], i, j, P))[0], ti, tl))
                 for x, ti, tl in windows)
        assert costs[(i, j)] == pytest.approx((sw - base) / 2, abs=1e-10)
        assert costs[(i, j)] > 0
    lm1 = _lm(n_kv=1)  # one KV head per layer: the head's cost is the layer's
    w1 = self_topk_windows(lm1, ids, top_k=8)
    per_head = head_switch_costs(lm1, w1, [0, 5, 40], kl)
    per_layer = switch_costs(lm1, w1, [0, 5, 40], kl)
    assert [per_head[(i, 0)] for i in range(3)] == pytest.approx(per_layer, abs=1e-12)


def test_kept_heads_schedule_keeps_the_top_k():
    ranked = ranking({(0, 0): 0.1, (0, 1): 2.0, (1, 0): -0.5, (1, 1): 0.7, (2, 0): 0.7, (2, 1): 0.0})
    assert [r[:2] for r in ranked[:3]] == [(0, 1), (1, 1), (2, 0)]  # ties: lower layer first
    spec = kept_heads_schedule({"name": "fixed", "P": 4}, ranked, 2, 2)
    assert spec == {"name": "head_hybrid", "base": {"name": "fixed", "P": 4}, "kept_heads": [[0, 1], [1, 1]],
                    "n_kv_heads": 2}
    assert make_schedule(spec).transpoints(3, 16) == [[4, ATTENTION_ONLY], [4, ATTENTION_ONLY], 4]
    lm = _lm()
    lm.set_schedule(spec)
    assert lm(torch.zeros(1, 6, dtype=torch.long))[0].shape == (1, 6, 50)
    assert kept_heads_schedule("staggered", ranked, 0, 2)["kept_heads"] == []
    for k in (-1, 7, True, 1.5):
        with pytest.raises(ValueError, match="keep_heads"):
            kept_heads_schedule("staggered", ranked, k, 2)


def test_bad_input_is_refused():
    lm, batch = _lm(), _batch()
    with pytest.raises(ValueError, match="method"):
        head_ablation(lm, [batch], method="zero")
    with pytest.raises(ValueError, match="transpoint"):
        head_ablation(lm, [batch], transpoint=-1)
    with pytest.raises(ValueError, match="out of range"):
        head_ablation(lm, [batch], heads=[(0, 2)])
    with pytest.raises(ValueError, match="at least one"):
        head_ablation(lm, [])
    with pytest.raises(ValueError, match="pos"):
        AnswerBatch(batch.ids, batch.pos + 30, batch.tgt, batch.mask, batch.lengths)
    torch.manual_seed(0)
    tf = LM(LMConfig(vocab_size=50, d_model=32, n_layers=1, arch="transformer", n_heads=2, head_dim=16))
    with pytest.raises(ValueError, match="Switch"):
        head_ablation(tf, [batch])


def test_random_ranking_is_a_seeded_permutation_of_every_head():
    from transmamba.adapt.head_ranking import random_ranking

    a = random_ranking([3, 3, 2], seed=1)
    assert sorted((i, j) for i, j, _ in a) == [(i, j) for i, n in enumerate([3, 3, 2]) for j in range(n)]
    assert a == random_ranking([3, 3, 2], seed=1) and a != random_ranking([3, 3, 2], seed=2)
    assert ranking({(i, j): s for i, j, s in a}) == a  # scores keep the drawn order


def test_read_ranking_checks_the_file_against_the_model(tmp_path):
    import json

    from transmamba.adapt.head_ranking import read_ranking

    p = tmp_path / "ranking.json"
    p.write_text(json.dumps({"ranking": [[1, 0, 2.5], [0, 1, 1.0]]}))
    assert read_ranking(p, [2, 2]) == [(1, 0, 2.5), (0, 1, 1.0)]
    with pytest.raises(ValueError, match=r"entry 0 \[1, 0, 2.5\] is not"):
        read_ranking(p, [2])  # one layer: layer 1 does not exist
    p.write_text(json.dumps({"ranking": [[0, 1, 1.0], [0, 1, 0.5]]}))
    with pytest.raises(ValueError, match="repeats head"):
        read_ranking(p, [2, 2])
    p.write_text("{}")
    with pytest.raises(ValueError, match="not a ranking.json"):
        read_ranking(p, [2, 2])
    with pytest.raises(FileNotFoundError, match="transmamba heads"):
        read_ranking(tmp_path / "nope.json", [2, 2])
