"""InfoNCE (transmamba.adapt.contrastive) against a slow reference; the learned temperature."""

import math

import pytest
import torch

from transmamba.adapt.contrastive import LogitScale, candidate_nce, info_nce, info_nce_ref


@pytest.mark.parametrize("with_same", [False, True])
def test_info_nce_matches_reference(with_same):
    g = torch.Generator().manual_seed(0)
    n = 9
    logits = torch.randn(n, n, generator=g, dtype=torch.float64) * 3
    same = None
    if with_same:
        cap = torch.tensor([0, 1, 0, 2, 3, 1, 4, 5, 0])
        same = cap[:, None] == cap[None, :]
    loss, t2v, v2t = info_nce(logits, same)
    assert float(loss) == pytest.approx(float(info_nce_ref(logits, same)), rel=1e-6)
    assert float(loss) == pytest.approx((float(t2v) + float(v2t)) / 2)
    if not with_same:  # asymmetric: the two directions differ
        assert float(t2v) != pytest.approx(float(v2t))


def test_same_caption_pairs_are_not_negatives():
    logits = torch.tensor([[1.0, 5.0], [5.0, 1.0]])
    same = torch.ones(2, 2, dtype=torch.bool)
    assert float(info_nce(logits, same)[0]) == pytest.approx(0.0, abs=1e-6)


def test_candidate_nce_and_scale():
    s = torch.tensor([[2.0, 0.0, 0.0]])
    assert float(candidate_nce(s)) == pytest.approx(-(2 - math.log(math.exp(2) + 2)))
    ls = LogitScale(0.07)
    assert float(ls().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        ls.log_scale.fill_(10.0)
    assert float(ls().detach()) == pytest.approx(100.0, rel=1e-5)  # clamped
    logits = torch.randn(4, 4, requires_grad=True)
    info_nce(logits)[0].backward()
    assert torch.isfinite(logits.grad).all()
