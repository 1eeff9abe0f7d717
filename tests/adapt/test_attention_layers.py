"""adapt.attention_layers: the layers whose switch costs most keep attention."""
import pytest
import torch

from transmamba.adapt.attention_layers import costliest, switch_costs
from transmamba.teachers.cache import topk_kl
from transmamba.models.lm import LM, LMConfig
from transmamba.modules.schedule import ATTENTION_ONLY


def _lm():
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=40, d_model=16, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32,
                       d_state=8, chunk_size=4, arch="transmamba", schedule={"name": "fixed", "P": 4})).double().eval()


def _windows(model, L=16, k=8):
    """Top-k log-probs of the model itself with every layer on attention: the 'teacher' the student
    equals exactly until a layer switches."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        x = torch.randint(0, 40, (2, L), generator=g)
        with torch.no_grad():
            logp = model(x, transpoints=ATTENTION_ONLY)[0].log_softmax(-1)
        v, i = logp.topk(k, dim=-1)
        out.append((x, i, v))
    return out


def test_costs_are_each_layer_switched_alone_against_all_attention():
    model = _lm()
    windows = _windows(model)
    costs = switch_costs(model, windows, [4, 4, 4, 4], topk_kl)
    assert len(costs) == 4 and all(c > 0 for c in costs)  # the teacher is the all-attention model: base KL 0
    for i in (0, 2):  # by hand
        tp = [ATTENTION_ONLY] * 4
        tp[i] = 4
        with torch.no_grad():
            by_hand = sum(float(topk_kl(model(x, transpoints=tp)[0], ti, tl)) for x, ti, tl in windows) / 2
        assert costs[i] == pytest.approx(by_hand, rel=1e-9, abs=1e-12)


def test_costs_equal_full_forwards_when_the_teacher_differs():
    """The shortcut (each switched run starts from the all-attention stream at its layer) equals
    full forwards: cost_i = KL(switched alone) - KL(all attention), with a base KL that is not 0."""
    model = _lm()
    other = _lm()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    windows = _windows(other)
    tps = [4, 7, 4, 16]  # layer 3 never switches on 16 tokens
    costs = switch_costs(model, windows, tps, topk_kl)

    def mean_kl(tp):
        with torch.no_grad():
            return sum(float(topk_kl(model(x, transpoints=tp)[0], ti, tl)) for x, ti, tl in windows) / len(windows)

    base = mean_kl([ATTENTION_ONLY] * 4)
    assert base > 1e-3
    for i in range(3):
        tp = [ATTENTION_ONLY] * 4
        tp[i] = tps[i]
        assert costs[i] == pytest.approx(mean_kl(tp) - base, rel=1e-9, abs=1e-12)
    assert costs[3] == 0.0


def test_blocks_from_continues_the_trunk():
    model = _lm()
    x = torch.randint(0, 40, (2, 12))
    tps = [4, ATTENTION_ONLY, 4, 8]
    with torch.no_grad():
        x_L, hidden = model.trunk(x, tps, return_hidden=True)
        for s in (0, 2, 4):
            assert torch.equal(model.blocks_from(hidden[s], s, tps), x_L)
        assert torch.equal(model.head(x_L), model(x, transpoints=tps)[0])
    with pytest.raises(ValueError, match="start 5 outside"):
        model.blocks_from(hidden[0], 5, tps)


def test_a_layer_with_a_broken_ssm_path_is_the_one_kept():
    model = _lm()
    with torch.no_grad():  # layer 2's SSM path: a 1000x output gain (its attention path is untouched)
        model.blocks[2].mixer.norm_weight.mul_(1000.0)
    windows = _windows(model)
    costs = switch_costs(model, windows, [4, 4, 4, 4], topk_kl)
    assert costliest(costs, 1) == [2]
    assert costs[2] > 2 * max(costs[i] for i in (0, 1, 3))


def test_a_layer_that_never_switches_costs_nothing():
    model = _lm()
    costs = switch_costs(model, _windows(model), [4, ATTENTION_ONLY, 16, 4], topk_kl)
    assert costs[1] == 0.0 and costs[2] == 0.0 and costs[0] > 0


def test_costliest_orders_and_refuses():
    assert costliest([0.1, 0.5, 0.3, 0.5], 2) == [1, 3]
    assert costliest([0.1, 0.5, 0.3, 0.5], 3) == [1, 2, 3]
    assert costliest([0.1, 0.2], 0) == []
    with pytest.raises(ValueError, match=r"keep_attention must be in \[0, 2\]"):
        costliest([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="at least one window"):
        switch_costs(_lm(), [], [4] * 4, topk_kl)
    with pytest.raises(ValueError, match="3 transpoints for 4 layers"):
        m = _lm()
        switch_costs(m, _windows(m), [4] * 3, topk_kl)
