"""transmamba.ops.norm: RMSNorm and gated RMSNorm, fast == reference == formula (values and grads)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _shapes import grads
from transmamba.ops.norm import gated_rms_norm, gated_rms_norm_ref, rms_norm, rms_norm_ref

F64 = torch.float64
SETTINGS = settings(max_examples=15, deadline=None)


# -------------------------------------------------------------------------------------- norms
@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=2), groups=st.integers(1, 3),
       gs=st.integers(1, 5), nbg=st.booleans(), seed=st.integers(0, 999))
def test_gated_norm_fast_matches_ref_and_formula(shape, groups, gs, nbg, seed):
    torch.manual_seed(seed)
    d = groups * gs
    x = torch.randn(*shape, d, dtype=F64, requires_grad=True)
    z = torch.randn(*shape, d, dtype=F64, requires_grad=True)
    w = torch.randn(d, dtype=F64, requires_grad=True)
    y = gated_rms_norm(x, z, w, group_size=gs, eps=1e-5, norm_before_gate=nbg)
    y_r = gated_rms_norm_ref(x, z, w, group_size=gs, eps=1e-5, norm_before_gate=nbg)
    # direct per-group formula, written independently of both
    gate = z / (1 + torch.exp(-z))
    h = x if nbg else x * gate
    want = torch.empty_like(h)
    for i in range(groups):
        sl = slice(i * gs, (i + 1) * gs)
        hg = h[..., sl]
        want[..., sl] = hg / torch.sqrt((hg * hg).sum(-1, keepdim=True) / gs + 1e-5)
    want = want * w * (gate if nbg else 1)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(y_r, want)
    for g, g_r in zip(grads(y, (x, z, w)), grads(y_r, (x, z, w))):
        torch.testing.assert_close(g, g_r)


def test_norm_gradcheck_and_rms_norm():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    z = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    w = torch.randn(6, dtype=F64, requires_grad=True)
    for nbg in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c: gated_rms_norm(a, b, c, group_size=3, eps=1e-5, norm_before_gate=nbg),
            (x, z, w))
    assert torch.autograd.gradcheck(lambda a, c: rms_norm(a, c, 1e-6), (x, w))
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))
    torch.testing.assert_close(rms_norm(x, w, 1e-6), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w)
    for g, g_r in zip(grads(rms_norm(x, w), (x, w)), grads(rms_norm_ref(x, w), (x, w))):
        torch.testing.assert_close(g, g_r)


def test_gated_norm_matches_hf_and_half_precision():
    from transformers.models.mamba2 import modeling_mamba2

    # transformers 5.25 renamed MambaRMSNormGated to Mamba2RMSNormGated
    hf_norm = getattr(modeling_mamba2, "Mamba2RMSNormGated", None) or modeling_mamba2.MambaRMSNormGated
    torch.manual_seed(0)
    hf = hf_norm(12, group_size=4, eps=1e-5)
    with torch.no_grad():
        hf.weight.normal_()
    x, z = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    torch.testing.assert_close(gated_rms_norm(x, z, hf.weight, group_size=4, eps=1e-5), hf(x, z))
    xb, zb, wb = x.bfloat16(), z.bfloat16(), hf.weight.detach().bfloat16()
    yb = gated_rms_norm(xb, zb, wb, group_size=4, eps=1e-5)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), hf(x, z).detach(), atol=0.05, rtol=0.02)


def test_norm_bad_input():
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(5))
    with pytest.raises(ValueError, match="z"):
        gated_rms_norm(x, torch.randn(2, 5), torch.ones(6))
    with pytest.raises(ValueError, match="group_size"):
        gated_rms_norm(x, x, torch.ones(6), group_size=4)
