"""ssd_chunked and ssd_step against the sequential reference ssd_ref (values and gradients)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _shapes import F64, ssd_inputs as make
from transmamba.ops.ssd import segsum, ssd_chunked, ssd_ref, ssd_step, ssd_step_ref


def _split(a):
    return (a["x"], a["dt"], a["A"], a["B"], a["C"]), {"D": a["D"], "initial_state": a["initial_state"]}


def _loss_and_grads(fn, a, seed=1):
    """Values, final state and grads of a random linear functional of (y, final_state)."""
    pos, kw = _split(a)
    y, s = fn(*pos, **kw, return_final_state=True)
    gen = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    loss = loss + (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    leaves = [v for v in a.values() if v is not None]
    return y, s, torch.autograd.grad(loss, leaves)


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 2),
    l=st.integers(1, 23),
    g=st.sampled_from([1, 2]),
    r=st.sampled_from([1, 2, 3]),
    p=st.integers(1, 4),
    n=st.integers(1, 5),
    chunk=st.sampled_from([1, 2, 3, 4, 5, 8, 16, 64]),
    D=st.booleans(),
    init=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_ref_values_and_grads(b, l, g, r, p, n, chunk, D, init, seed):
    a = make(b, l, g * r, p, g, n, seed=seed, D=D, init=init, grad=True)
    y1, s1, g1 = _loss_and_grads(ssd_ref, a)
    y2, s2, g2 = _loss_and_grads(lambda *x, **k: ssd_chunked(*x, chunk_size=chunk, **k), a)
    torch.testing.assert_close(y2, y1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s2, s1, rtol=1e-9, atol=1e-9)
    for name, u, v in zip([k for k, v in a.items() if v is not None], g2, g1):
        torch.testing.assert_close(u, v, rtol=1e-8, atol=1e-8, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("l,chunk", [(1, 64), (5, 64), (64, 64), (65, 64), (130, 64), (37, 7)])
def test_chunked_lengths(l, chunk):
    a = make(2, l, 4, 3, 2, 4, D=True, init=True)
    pos, kw = _split(a)
    y1, s1 = ssd_ref(*pos, **kw, return_final_state=True)
    y2, s2 = ssd_chunked(*pos, **kw, chunk_size=chunk, return_final_state=True)
    assert y2.shape == (2, l, 4, 3) and s2.shape == (2, 4, 3, 4)
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(s2, s1)


def test_gradcheck_chunked():
    a = make(1, 6, 2, 2, 1, 2, D=True, init=True, grad=True)
    names = list(a)

    def f(*vals):
        kw = dict(zip(names, vals))
        y, s = ssd_chunked(kw.pop("x"), kw.pop("dt"), kw.pop("A"), kw.pop("B"), kw.pop("C"),
                           chunk_size=4, return_final_state=True, **kw)
        return y, s

    assert torch.autograd.gradcheck(f, tuple(a.values()))


def test_no_initial_state_equals_zero_state():
    a = make(1, 9, 2, 3, 1, 4)
    pos, _ = _split(a)
    z = torch.zeros(1, 2, 3, 4, dtype=F64)
    torch.testing.assert_close(ssd_chunked(*pos, chunk_size=4), ssd_chunked(*pos, chunk_size=4, initial_state=z))


def test_strong_decay_is_stable():
    """Large dt*A: the segsum keeps every exponent <= 0, so no inf/NaN in values or grads."""
    a = make(1, 40, 2, 2, 1, 3, grad=True)
    with torch.no_grad():
        a["dt"].mul_(200.0)
        a["A"].copy_(torch.tensor([-30.0, -0.001], dtype=F64))
    y1, s1, g1 = _loss_and_grads(ssd_ref, a)
    y2, s2, g2 = _loss_and_grads(lambda *x, **k: ssd_chunked(*x, chunk_size=16, **k), a)
    assert torch.isfinite(y2).all() and all(torch.isfinite(t).all() for t in g2)
    torch.testing.assert_close(y2, y1)
    for u, v in zip(g2, g1):
        torch.testing.assert_close(u, v)


def test_segsum():
    a = -torch.rand(3, 7, dtype=F64)
    s = segsum(a)
    cs = torch.cumsum(a, -1)
    for i in range(7):
        for j in range(7):
            if i >= j:
                torch.testing.assert_close(s[:, i, j], cs[:, i] - cs[:, j])
            else:
                assert torch.isneginf(s[:, i, j]).all()
    assert (torch.exp(s).triu(1) == 0).all()


# --------------------------------------------------------------------------------------- step


@settings(max_examples=10, deadline=None)
@given(l=st.integers(1, 9), g=st.sampled_from([1, 2]), D=st.booleans(), init=st.booleans(),
       seed=st.integers(0, 2**16))
def test_step_token_by_token_matches_ref(l, g, D, init, seed):
    a = make(2, l, 2 * g, 3, g, 4, seed=seed, D=D, init=init)
    pos, kw = _split(a)
    y_ref, s_ref = ssd_ref(*pos, **kw, return_final_state=True)
    x, dt, A, B, C = pos
    state = kw["initial_state"] if init else torch.zeros(2, 2 * g, 3, 4, dtype=F64)
    ys = []
    for t in range(l):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=kw["D"])
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref)
    torch.testing.assert_close(state, s_ref)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(0, 3), g=st.sampled_from([1, 2, 3]), r=st.sampled_from([1, 2, 3]), p=st.integers(1, 5),
       n=st.integers(1, 6), D=st.booleans(), seed=st.integers(0, 2**16))
def test_step_fast_equals_ref_values_and_grads(b, g, r, p, n, D, seed):
    """The grouped-bmm step against the per-head formula: outputs, new state and every gradient."""
    a = make(b, 1, g * r, p, g, n, seed=seed, D=D, init=True, grad=True)
    args = (a["initial_state"], a["x"][:, 0], a["dt"][:, 0], a["A"], a["B"][:, 0], a["C"][:, 0])
    outs = [fn(*args, D=a["D"]) for fn in (ssd_step, ssd_step_ref)]
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want)
    leaves = [v for v in a.values() if v is not None]
    gen = torch.Generator().manual_seed(seed)
    cot = [torch.randn(t.shape, generator=gen, dtype=F64) for t in outs[0]]
    g_fast, g_ref = (torch.autograd.grad(sum((t * c).sum() for t, c in zip(o, cot)), leaves, allow_unused=True)
                     for o in outs)
    for gf, gr in zip(g_fast, g_ref):
        torch.testing.assert_close(gf, gr)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_step_fast_equals_ref_in_low_precision_and_under_autocast(dtype):
    a = make(3, 1, 6, 4, 2, 8, D=True, init=True, dtype=dtype)
    args = (a["initial_state"].float(), a["x"][:, 0], a["dt"][:, 0], a["A"], a["B"][:, 0], a["C"][:, 0])
    y_ref, s_ref = ssd_step_ref(*args, D=a["D"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = ssd_step(*args, D=a["D"])
    assert y.dtype == dtype and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)  # the state is not formed in bf16
    torch.testing.assert_close(y.float(), y_ref.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)


def test_prefill_then_steps_equals_full_forward():
    l, T = 21, 13
    a = make(2, l, 4, 3, 2, 5, D=True)
    x, dt, A, B, C = _split(a)[0]
    D = a["D"]
    y_full = ssd_chunked(x, dt, A, B, C, D=D, chunk_size=8)
    y_pre, state = ssd_chunked(x[:, :T], dt[:, :T], A, B[:, :T], C[:, :T], D=D, chunk_size=8,
                               return_final_state=True)
    ys = [y_pre]
    for t in range(T, l):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=D)
        ys.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), y_full)


# -------------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp64(dtype):
    a64 = make(2, 100, 4, 8, 1, 8, D=True, init=True)
    a_lo = {k: None if v is None else v.to(dtype) for k, v in a64.items()}
    pos64, kw64 = _split(a64)
    y64, s64 = ssd_ref(*pos64, **kw64, return_final_state=True)
    pos, kw = _split(a_lo)
    y, s = ssd_chunked(*pos, **kw, chunk_size=32, return_final_state=True)
    assert y.dtype == dtype and s.dtype == torch.float32
    # the inputs themselves were rounded to `dtype`; compare relative to the output's scale
    scale = y64.abs().max()
    assert (y.to(F64) - y64).abs().max() / scale < 3e-2
    assert (s.to(F64) - s64).abs().max() / s64.abs().max() < 3e-2
    y_t, s_t = ssd_step(kw["initial_state"], pos[0][:, 0], pos[1][:, 0], pos[2], pos[3][:, 0], pos[4][:, 0])
    assert y_t.dtype == dtype and s_t.dtype == torch.float32


def test_float32_close_to_float64():
    a64 = make(1, 300, 2, 16, 1, 16, D=True)
    pos64, kw64 = _split(a64)
    y64 = ssd_ref(*pos64, **kw64)
    pos32 = [t.float() for t in pos64]
    y32 = ssd_chunked(*pos32, D=kw64["D"].float(), chunk_size=64)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- bad inputs


def _bad_cases():
    a = make(2, 6, 4, 3, 2, 5)
    x, dt, A, B, C = a["x"], a["dt"], a["A"], a["B"], a["C"]
    good = dict(x=x, dt=dt, A=A, B=B, C=C)
    nan_dt = dt.clone()
    nan_dt[0, 1, 0] = float("nan")
    inf_dt = dt.clone()
    inf_dt[1, 2, 3] = float("inf")
    return [
        ("x", dict(good, x=x[0])),
        ("dt", dict(good, dt=dt[..., None])),
        ("dt", dict(good, dt=dt[:1])),
        ("dt", dict(good, dt=dt[:, :5])),
        ("dt", dict(good, dt=dt[:, :, :3])),
        ("B", dict(good, B=B[:, :, :, None])),
        ("B", dict(good, B=B[:1])),
        ("B", dict(good, B=B[:, :4])),
        ("C", dict(good, C=C[:, :4])),
        ("C", dict(good, C=C[:, :, :1])),
        ("C", dict(good, C=C[..., :4])),
        ("g", dict(good, B=torch.randn(2, 6, 3, 5, dtype=F64), C=torch.randn(2, 6, 3, 5, dtype=F64))),
        ("A", dict(good, A=A[:3])),
        ("A", dict(good, A=A[None])),
        ("D", dict(good, D=torch.ones(3, dtype=F64))),
        ("D", dict(good, D=torch.ones(4, 1, dtype=F64))),
        ("initial_state", dict(good, initial_state=torch.zeros(2, 4, 3, 4, dtype=F64))),
        ("initial_state", dict(good, initial_state=torch.zeros(2, 4, 3, dtype=F64))),
        ("dt", dict(good, dt=nan_dt)),
        ("dt", dict(good, dt=inf_dt)),
        ("dt", dict(good, dt=dt - dt.max())),
        ("dt", dict(good, dt=torch.zeros_like(dt))),
        ("x", dict(good, x=torch.ones(2, 6, 4, 3, dtype=torch.long))),
    ]


@pytest.mark.parametrize("fn", [ssd_ref, ssd_chunked])
@pytest.mark.parametrize("name,kw", _bad_cases())
def test_bad_inputs_raise(fn, name, kw):
    kw = dict(kw)
    pos = [kw.pop(k) for k in ("x", "dt", "A", "B", "C")]
    with pytest.raises(ValueError, match=name):
        fn(*pos, **kw)


@pytest.mark.parametrize("chunk", [0, -1, 2.0, None])
def test_bad_chunk_size(chunk):
    a = make(1, 4, 2, 2, 1, 2)
    pos, _ = _split(a)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunked(*pos, chunk_size=chunk)


def test_step_bad_inputs():
    a = make(2, 1, 4, 3, 2, 5)
    x, dt, B, C = (a[k][:, 0] for k in ("x", "dt", "B", "C"))
    A = a["A"]
    s = torch.zeros(2, 4, 3, 5, dtype=F64)
    with pytest.raises(ValueError, match="state"):
        ssd_step(s[..., :4], x, dt, A, B, C)
    with pytest.raises(ValueError, match="x_t"):
        ssd_step(s, x[0], dt, A, B, C)
    with pytest.raises(ValueError, match="dt_t"):
        ssd_step(s, x, -dt, A, B, C)
    with pytest.raises(ValueError, match="B_t"):
        ssd_step(s, x, dt, A, B[:1], C)
    with pytest.raises(ValueError, match="C_t"):
        ssd_step(s, x, dt, A, B, C[..., :2])
    with pytest.raises(ValueError, match="D"):
        ssd_step(s, x, dt, A, B, C, D=torch.ones(2, dtype=F64))


def test_bf16_autocast_keeps_the_state_in_fp32():
    """Under bf16 autocast the per-chunk states, the state passing and the memory converter run in
    float32: the final state is float32 and as exact as without autocast (up to the bf16 rounding
    of its inputs), while y carries bf16 rounding from the intra-chunk products."""
    from transmamba.ops.memory_converter import memory_convert

    torch.manual_seed(0)
    b, l, h, p, g, n = 2, 200, 4, 16, 2, 16
    x, B, C = torch.randn(b, l, h, p), torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    dt = torch.rand(b, l, h) * 0.5 + 0.01
    A = -torch.rand(h) - 0.1
    y32, s32 = ssd_chunked(x, dt, A, B, C, chunk_size=32, return_final_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, s16 = ssd_chunked(x, dt, A, B, C, chunk_size=32, return_final_state=True)
        m16 = memory_convert(B, x, dt, A, chunk_size=32)  # the state after the whole sequence
    m32 = memory_convert(B, x, dt, A, chunk_size=32)
    assert s16.dtype == torch.float32 and m16.dtype == torch.float32
    assert torch.allclose(s16, s32, rtol=1e-5, atol=1e-5)  # no bf16 anywhere in the state path
    assert torch.allclose(m16, m32, rtol=1e-5, atol=1e-5) and torch.allclose(m32, s32, rtol=1e-4, atol=1e-4)
    err = (y16.float() - y32).abs().max() / y32.abs().max()
    assert 0 < err < 3e-2  # the intra-chunk products did run in bf16
