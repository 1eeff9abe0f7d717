"""Memory converter: prefix K, V -> the exact SSM state the scan has after the prefix."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _shapes import F64, ssd_inputs as make
from transmamba.ops.memory_converter import memory_convert, memory_convert_masked
from transmamba.ops.ssd import ssd_chunked, ssd_ref


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 2),
    L=st.integers(1, 20),
    frac=st.floats(0, 1),
    g=st.sampled_from([1, 2]),
    r=st.sampled_from([1, 2]),
    p=st.integers(1, 3),
    n=st.integers(1, 4),
    chunk=st.sampled_from([1, 3, 4, 8, 64]),
    init=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_convert_equals_ref_state_and_continues_scan(b, L, frac, g, r, p, n, chunk, init, seed):
    a = make(b, L, g * r, p, g, n, seed=seed, init=init)
    x, dt, A, B, C, s0 = a["x"], a["dt"], a["A"], a["B"], a["C"], a["initial_state"]
    P = round(frac * L)
    state = memory_convert(B[:, :P], x[:, :P], dt[:, :P], A, chunk_size=chunk, initial_state=s0)
    if P > 0:
        _, s_ref = ssd_ref(x[:, :P], dt[:, :P], A, B[:, :P], C[:, :P], initial_state=s0,
                           return_final_state=True)
    else:
        s_ref = torch.zeros(b, g * r, p, n, dtype=F64) if s0 is None else s0
    torch.testing.assert_close(state, s_ref, rtol=1e-10, atol=1e-10)
    # continuing the scan from the converted state reproduces the suffix of the full scan
    y_full, s_full = ssd_ref(x, dt, A, B, C, initial_state=s0, return_final_state=True)
    y_suf, s_suf = ssd_chunked(x[:, P:], dt[:, P:], A, B[:, P:], C[:, P:], chunk_size=chunk,
                               initial_state=state, return_final_state=True)
    torch.testing.assert_close(y_suf, y_full[:, P:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_suf, s_full, rtol=1e-10, atol=1e-10)


def test_p_zero():
    a = make(2, 5, 4, 3, 2, 4, init=True)
    x, dt, A, B = a["x"], a["dt"], a["A"], a["B"]
    z = memory_convert(B[:, :0], x[:, :0], dt[:, :0], A)
    assert z.shape == (2, 4, 3, 4) and (z == 0).all()
    s0 = a["initial_state"]
    torch.testing.assert_close(memory_convert(B[:, :0], x[:, :0], dt[:, :0], A, initial_state=s0), s0)
    Pz = torch.zeros(2, dtype=torch.long)
    assert (memory_convert_masked(B, x, dt, A, Pz) == 0).all()
    torch.testing.assert_close(memory_convert_masked(B, x, dt, A, Pz, initial_state=s0), s0)


def test_grads_match_ref():
    a = make(2, 11, 4, 3, 2, 4, init=True, grad=True)
    x, dt, A, B, C, s0 = a["x"], a["dt"], a["A"], a["B"], a["C"], a["initial_state"]
    w = torch.randn(2, 4, 3, 4, dtype=F64)
    leaves = [x, dt, A, B, s0]
    g1 = torch.autograd.grad((memory_convert(B, x, dt, A, chunk_size=4, initial_state=s0) * w).sum(), leaves)
    _, s = ssd_ref(x, dt, A, B, C, initial_state=s0, return_final_state=True)
    g2 = torch.autograd.grad((s * w).sum(), leaves)
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)


def test_gradcheck():
    a = make(1, 5, 2, 2, 1, 2, init=True, grad=True)
    args = (a["B"], a["x"], a["dt"], a["A"], a["initial_state"])
    assert torch.autograd.gradcheck(
        lambda K, V, dt, A, s0: memory_convert(K, V, dt, A, chunk_size=2, initial_state=s0), args
    )


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 4), L=st.integers(1, 17), chunk=st.sampled_from([2, 4, 64]),
       init=st.booleans(), seed=st.integers(0, 2**16))
def test_masked_equals_per_row(b, L, chunk, init, seed):
    a = make(b, L, 4, 3, 2, 4, seed=seed, init=init, grad=True)
    x, dt, A, B, s0 = a["x"], a["dt"], a["A"], a["B"], a["initial_state"]
    P = torch.randint(0, L + 1, (b,), generator=torch.Generator().manual_seed(seed))
    state = memory_convert_masked(B, x, dt, A, P, chunk_size=chunk, initial_state=s0)
    rows = [
        memory_convert(B[i : i + 1, : P[i]], x[i : i + 1, : P[i]], dt[i : i + 1, : P[i]], A, chunk_size=chunk,
                       initial_state=None if s0 is None else s0[i : i + 1])
        for i in range(b)
    ]
    torch.testing.assert_close(state, torch.cat(rows), rtol=1e-10, atol=1e-10)
    if not state.requires_grad:  # every P_b = 0 and no initial state: a constant zero state
        assert (P == 0).all() and s0 is None and (state == 0).all()
        return
    w = torch.randn(state.shape, dtype=F64)
    leaves = [x, dt, A, B]
    kw = dict(allow_unused=True, materialize_grads=True)  # all P_b = 0: only s0 is used
    g1 = torch.autograd.grad((state * w).sum(), leaves, **kw)
    g2 = torch.autograd.grad((torch.cat(rows) * w).sum(), leaves, **kw)
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)
    # tokens at or after P_b get exactly zero gradient
    keep = torch.arange(L)[None] < P[:, None]
    assert (g1[0][~keep] == 0).all() and (g1[1][~keep] == 0).all()


def test_masked_ignores_garbage_after_p():
    a = make(2, 9, 2, 3, 1, 4)
    x, dt, A, B = a["x"], a["dt"], a["A"], a["B"]
    P = torch.tensor([4, 9])
    clean = memory_convert_masked(B, x, dt, A, P)
    x2, dt2, B2 = x.clone(), dt.clone(), B.clone()
    x2[0, 4:] = float("nan")
    dt2[0, 4:] = -1.0
    B2[0, 6:] = float("inf")
    torch.testing.assert_close(memory_convert_masked(B2, x2, dt2, A, P), clean)


def test_half_precision():
    a = make(2, 70, 4, 8, 1, 8)
    x, dt, A, B, C = a["x"], a["dt"], a["A"], a["B"], a["C"]
    s64 = memory_convert(B, x, dt, A)
    s16 = memory_convert(B.bfloat16(), x.bfloat16(), dt.bfloat16(), A, chunk_size=16)
    assert s16.dtype == torch.float32
    assert (s16.double() - s64).abs().max() / s64.abs().max() < 3e-2


def test_bad_inputs():
    a = make(2, 6, 4, 3, 2, 5)
    x, dt, A, B = a["x"], a["dt"], a["A"], a["B"]
    cases = [
        ("V", dict(V=x[0])),
        ("K", dict(K=B[:, :5])),
        ("K", dict(K=B[:1])),
        ("g", dict(K=torch.randn(2, 6, 3, 5, dtype=F64))),
        ("dt", dict(dt=dt[:, :, :2])),
        ("dt", dict(dt=-dt)),
        ("dt", dict(dt=dt * float("nan"))),
        ("A", dict(A=A[:2])),
        ("initial_state", dict(initial_state=torch.zeros(2, 4, 3, 4, dtype=F64))),
        ("chunk_size", dict(chunk_size=0)),
    ]
    for name, over in cases:
        kw = dict(K=B, V=x, dt=dt, A=A)
        kw.update(over)
        with pytest.raises(ValueError, match=name):
            memory_convert(kw.pop("K"), kw.pop("V"), kw.pop("dt"), kw.pop("A"), **kw)
    for P in [torch.tensor([1, 7]), torch.tensor([-1, 2]), torch.tensor([1.0, 2.0]), torch.tensor([1]), [1, 2]]:
        with pytest.raises(ValueError, match="P"):
            memory_convert_masked(B, x, dt, A, P)
    with pytest.raises(ValueError, match="dt"):
        memory_convert_masked(B, x, -dt, A, torch.tensor([1, 2]))
