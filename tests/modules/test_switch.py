"""TransMamba-Switch invariants, float64, against naive references built from the same weights."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from switch_refs import attention_ref, ssm_ref
from transmamba.modules.switch import SwitchConfig, SwitchMixer
from transmamba.ops.rope import apply_rope, rope_cos_sin


pytestmark = pytest.mark.usefixtures("float64_default")  # tests/modules/conftest.py


def make(h=4, g=2, n=8, d=16, rope=False, act="silu", use_D=False, chunk=8, seed=0):
    torch.manual_seed(seed)
    m = SwitchMixer(SwitchConfig(d_model=d, n_heads=h, n_kv_heads=g, head_dim=n, rope=rope,
                                         conv_activation=act, use_D=use_D, chunk_size=chunk))
    with torch.no_grad():  # make every parameter matter
        m.conv_bias.normal_(0, 0.1)
        m.norm_weight.normal_(1, 0.1)
        m.dt_bias.normal_(-1, 0.5)
    return m


shapes = st.tuples(st.integers(1, 2), st.integers(1, 40), st.sampled_from([(4, 2), (4, 4), (2, 1)]),
                   st.booleans(), st.booleans())


@settings(max_examples=15, deadline=None)
@given(shapes, st.data())
def test_switch_equals_attention_prefix_and_ssm_suffix(shape, data):
    b, L, (h, g), rope, use_D = shape
    m = make(h=h, g=g, rope=rope, use_D=use_D)
    u = torch.randn(b, L, 16)
    P = data.draw(st.integers(0, L + 3))
    y = m(u, transpoint=P)
    att, ssm = attention_ref(m, u), ssm_ref(m, u)
    torch.testing.assert_close(y[:, :P], att[:, :P], atol=1e-10, rtol=1e-8)  # invariant 1 when P >= L
    torch.testing.assert_close(y[:, P:], ssm[:, P:], atol=1e-10, rtol=1e-8)  # invariant 2 when P = 0


def test_gradients_match_piecewise_reference():
    m = make(rope=True, use_D=True)
    u = torch.randn(2, 23, 16, requires_grad=True)
    P = 9
    w = torch.randn(2, 23, 16)
    (m(u, transpoint=P) * w).sum().backward()
    fast = [u.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    u.grad = None
    m.zero_grad()
    ref = torch.cat([attention_ref(m, u)[:, :P], ssm_ref(m, u)[:, P:]], 1)
    (ref * w).sum().backward()
    slow = [u.grad] + [p.grad for p in m.parameters()]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_per_row_transpoints_equal_separate_rows():
    m = make()
    u = torch.randn(3, 30, 16)
    P = torch.tensor([0, 7, 40])
    y = m(u, transpoint=P)
    for i in range(3):
        torch.testing.assert_close(y[i:i + 1], m(u[i:i + 1], transpoint=int(P[i])))


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 12), st.integers(0, 30), st.integers(1, 14), st.booleans())
def test_prefill_then_step_equals_forward(T, P, n_steps, rope):
    """Invariant 4: any P, including P beyond the prompt; the KV cache is freed once past P."""
    m = make(rope=rope)
    L = T + n_steps
    u = torch.randn(2, L, 16)
    full = m(u, transpoint=P)
    cache = m.allocate_cache(2, transpoint=P)
    outs = [m(u[:, :T], cache=cache)]
    for t in range(T, L):
        outs.append(m.step(u[:, t], cache)[:, None])
        assert (cache.k is None) == (t >= P)  # freed exactly when the token at P was consumed
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-8)
    if L > P:
        assert cache.k is None and cache.v is None and cache.ssm_state is not None
    else:
        assert cache.ssm_state is None and cache.k.shape[1] >= L


def test_chunked_prefill_equals_forward():
    m = make(rope=True)
    u = torch.randn(2, 40, 16)
    full = m(u, transpoint=17)
    cache = m.allocate_cache(2, 64, transpoint=17)
    outs = [m(u[:, a:b_], cache=cache) for a, b_ in [(0, 5), (5, 12), (12, 21), (21, 40)]]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-8)


def test_cache_memory_constant_past_transpoint():
    m = make()
    cache = m.allocate_cache(1, transpoint=64)
    sizes = []
    for t in range(100):
        m.step(torch.randn(1, 16), cache)
        sizes.append(cache.nbytes())
    assert sizes[63] > sizes[20] > sizes[0]  # the KV cache grows before P
    assert len(set(sizes[64:])) == 1  # constant after the switch
    assert sizes[64] < sizes[63]


def test_lossless_attention_config_is_plain_attention():
    """Identity conv and no activation: the attention path is exactly softmax attention on the projections."""
    m = make(act=None, rope=True)
    m.cfg.conv_init_identity = True
    m.reset_ssm_parameters()
    u = torch.randn(1, 12, 16)
    z, qkv, _ = m.project(u)
    q, k, v = m.split_qkv(qkv)
    cos, sin = rope_cos_sin(torch.arange(12), m.n, m.cfg.rope_theta, dtype=u.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    r = m.h // m.g
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(r, 2).transpose(1, 2),
                                       v.repeat_interleave(r, 2).transpose(1, 2), is_causal=True)
    torch.testing.assert_close(m(u, transpoint=100), m.out_proj(o.transpose(1, 2).flatten(-2)))


@pytest.mark.parametrize("bad,match", [
    (dict(u=torch.randn(2, 5)), "u"),
    (dict(u=torch.randn(2, 5, 7)), "d_model"),
    (dict(transpoint=-1), "transpoint"),
    (dict(transpoint=torch.tensor([1, 2, 3])), "transpoint"),
])
def test_bad_input_names_the_problem(bad, match):
    m = make()
    kw = dict(u=torch.randn(2, 5, 16), transpoint=2) | bad
    with pytest.raises(ValueError, match=match):
        m(kw.pop("u"), **kw)


# ------------------------------------------------------------------------------ guard rails
@pytest.mark.parametrize("P", [7.9, 7.0, "7", [[5], [3]], [5, 3], True, False, -1,
                               torch.tensor([1.0, 2.0]), torch.tensor([True, False]),
                               torch.tensor([[5], [3]]), torch.tensor(5), torch.tensor([3, -1])])
def test_bad_transpoints_are_refused_by_forward_and_allocate_cache(P):
    """A TransPoint is an int >= 0 or an integer tensor "b" with entries >= 0; anything else is a
    ValueError naming it (negative per-row entries used to be clamped to 0 silently)."""
    m = make()
    with pytest.raises(ValueError, match="transpoint"):
        m(torch.randn(2, 5, 16), transpoint=P)
    if not isinstance(P, torch.Tensor):
        with pytest.raises(ValueError, match="transpoint"):
            m.allocate_cache(2, 8, transpoint=P)


def test_good_transpoints_of_every_integer_kind_agree():
    m = make()
    u = torch.randn(2, 9, 16)
    want = m(u, transpoint=4)
    for P in (torch.tensor([4, 4]), torch.tensor([4, 4], dtype=torch.int32), 4):
        torch.testing.assert_close(m(u, transpoint=P), want)
    import numpy as np
    torch.testing.assert_close(m(u, transpoint=np.int64(4)), want)


@pytest.mark.parametrize("P", [0, 3, 100, "rows"])
def test_empty_batch_and_length_give_empty_outputs(P):
    m = make()
    for b, L in [(0, 6), (2, 0), (0, 0)]:
        tp = torch.tensor([1, 5][:b], dtype=torch.long) if P == "rows" else P
        assert m(torch.randn(b, L, 16), transpoint=tp).shape == (b, L, 16)
        if P != "rows":
            cache = m.allocate_cache(b, 8, transpoint=P)
            assert m(torch.randn(b, L, 16), cache=cache).shape == (b, L, 16)


@pytest.mark.parametrize("P", [0, 3, 100])  # SSM only, both paths, attention only
def test_non_finite_input_is_refused_on_every_path(P):
    m = make()
    u = torch.randn(2, 6, 16)
    u[1, 4, 2] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        m(u, transpoint=P)
    cache = m.allocate_cache(2, 8, transpoint=P)
    with pytest.raises(ValueError, match="contains NaN"):
        m.step(u[:, 4], cache)
    with torch.no_grad():  # a NaN weight row makes K (= B) NaN: named as such
        m.in_proj.weight[m.h * m.p + m.h * m.n] = float("nan")
    with pytest.raises(ValueError, match=r"^k \(= B, K\) contains NaN"):
        m(torch.randn(2, 6, 16), transpoint=P)


def test_finite_checks_off_lets_nan_through():
    from transmamba.ops.validate import finite_checks

    m = make()
    u = torch.randn(1, 6, 16)
    u[0, 2, 0] = float("nan")
    with finite_checks(False):  # the attention path (no dt > 0 check, which stays on) then returns NaN
        assert torch.isnan(m(u, transpoint=100)).any()


def test_gradients_flow_with_the_checks_on():
    """The checks do not touch autograd: per-row and int TransPoints give the same, finite grads
    with CHECK_FINITE on and off."""
    from transmamba.ops.validate import finite_checks

    m = make(rope=True)
    u = torch.randn(2, 11, 16)
    grads = []
    for on in (True, False):
        for P in (5, torch.tensor([2, 9])):
            x = u.clone().requires_grad_()
            m.zero_grad()
            with finite_checks(on):
                (m(x, transpoint=P) ** 2).sum().backward()
            grads.append([x.grad] + [p.grad.clone() for p in m.parameters()])
    for g in grads[0] + grads[1]:
        assert g is not None and torch.isfinite(g).all()
    assert all(g.abs().sum() > 0 for g in grads[0][:1] + grads[0][3:])
    for a, b in zip(grads[:2], grads[2:]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
