"""ops.head_loss: the chunked head + CE + top-k KL against the plain autograd composition."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from transmamba.ops.head_loss import IGNORE, head_ce_kl, head_ce_kl_ref
from transmamba.teachers.cache import topk_kl


def _inputs(n, d, V, k, dtype=torch.float64, seed=0, ignore=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    W = (torch.randn(V, d, generator=g, dtype=dtype) / d ** 0.5).requires_grad_()
    y = torch.randint(0, V, (n,), generator=g)
    y[:ignore] = IGNORE
    idx = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(n)]) if k else None
    logp = torch.log_softmax(torch.randn(n, V, generator=g, dtype=dtype), -1).gather(1, idx) if k else None
    return h, W, y, idx, logp


def _grads(fn, h, W):
    loss, ce, kl = fn()
    gh, gW = torch.autograd.grad(loss, (h, W))
    return loss.detach(), ce, kl, gh, gW


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 12), V=st.integers(2, 50), k=st.integers(0, 6),
       chunk=st.integers(1, 17), ignore=st.integers(0, 3), T=st.sampled_from([0.5, 1.0, 2.0]),
       w_ce=st.sampled_from([0.0, 0.5, 1.0]), w_kl=st.sampled_from([0.0, 1.0, 2.0]))
def test_matches_reference_values_and_grads_float64(n, d, V, k, chunk, ignore, T, w_ce, w_kl):
    k = min(k, V)
    ignore = min(ignore, n - 1)
    h, W, y, idx, logp = _inputs(n, d, V, k, ignore=ignore)
    kw = dict(w_ce=w_ce, w_kl=w_kl, T=T)
    got = _grads(lambda: head_ce_kl(h, W, y, idx, logp, chunk=chunk, **kw), h, W)
    ref = _grads(lambda: head_ce_kl_ref(h, W, y, idx, logp, **kw), h, W)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_kl_is_the_teacher_cache_topk_kl():
    h, W, y, idx, logp = _inputs(12, 5, 30, 4)
    _, _, kl = head_ce_kl(h, W, y, idx, logp, T=1.5)
    want = topk_kl((h @ W.T)[None], idx[None], logp[None], T=1.5)
    torch.testing.assert_close(kl, want.detach())


def test_scaled_upstream_gradient_and_no_grad():
    h, W, y, idx, logp = _inputs(9, 4, 20, 3)
    loss, _, _ = head_ce_kl(h, W, y, idx, logp, chunk=4)
    gh, = torch.autograd.grad(3.0 * loss, (h,))
    ref, _, _ = head_ce_kl_ref(h, W, y, idx, logp)
    gr, = torch.autograd.grad(3.0 * ref, (h,))
    torch.testing.assert_close(gh, gr)
    with torch.no_grad():
        l2, _, _ = head_ce_kl(h, W, y, idx, logp)
    torch.testing.assert_close(l2, loss.detach())


def test_bf16_autocast_close_to_fp32():
    h, W, y, idx, logp = _inputs(64, 32, 300, 8, dtype=torch.float32, seed=3)
    ref = _grads(lambda: head_ce_kl_ref(h, W, y, idx, logp), h, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(lambda: head_ce_kl(h, W, y, idx, logp, chunk=16), h, W)
    assert got[3].dtype == torch.float32 and got[4].dtype == torch.float32
    for a, b in zip(got[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    for a, b in zip(got[3:], ref[3:]):
        assert (a - b).norm() / b.norm() < 2e-2


def test_all_targets_ignored_gives_nan_ce_as_cross_entropy_does():
    h, W, y, idx, logp = _inputs(5, 3, 10, 2, ignore=5)
    loss, ce, kl = head_ce_kl(h, W, y, idx, logp, w_ce=1.0, w_kl=1.0)
    ref, ce_ref, _ = head_ce_kl_ref(h, W, y, idx, logp)
    assert torch.isnan(ce) and torch.isnan(ce_ref) and torch.isnan(loss) and torch.isnan(ref)
    loss, _, kl = head_ce_kl(h, W, y, idx, logp, w_ce=0.0, w_kl=1.0)  # KL alone stays usable
    torch.testing.assert_close(loss.detach(), kl)


@pytest.mark.parametrize("bad, msg", [
    (dict(targets=torch.full((4,), 99)), "targets hold ids outside"),
    (dict(topk_idx=torch.full((4, 2), 99)), "topk_idx holds ids outside"),
    (dict(topk_logp=None), "give both or neither"),
    (dict(T=0.0), "T must be > 0"),
    (dict(chunk=0), "chunk must be >= 1"),
    (dict(h=torch.randn(4, 2)), "weight has size"),
])
def test_bad_input_is_named(bad, msg):
    h, W, y, idx, logp = _inputs(4, 3, 10, 2)
    kw = dict(h=h, weight=W, targets=y, topk_idx=idx, topk_logp=logp, T=1.0, chunk=2) | bad
    with pytest.raises(ValueError, match=msg):
        head_ce_kl(kw.pop("h"), kw.pop("weight"), kw.pop("targets"), kw.pop("topk_idx"), kw.pop("topk_logp"), **kw)
