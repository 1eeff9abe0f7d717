"""Guard rails of the public ops (`transmamba.ops.validate` and its users): empty batches and
lengths, NaN/Inf inputs, A >= 0, TransPoint values, the CHECK_FINITE switch, and gradients."""

import numpy as np
import pytest
import torch
from _shapes import F64, ssd_inputs

from transmamba.ops import validate
from transmamba.ops.memory_converter import memory_convert, memory_convert_masked
from transmamba.ops.selective_scan import selective_scan, selective_scan_ref
from transmamba.ops.ssd import ssd_chunked, ssd_ref, ssd_step
from transmamba.ops.validate import check_transpoint, finite_checks


def _ssd(b, l, **kw):
    a = ssd_inputs(b, l, 4, 3, 2, 5, **kw)
    return a


def _scan_inputs(b, l, d=3, n=2):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return dict(u=r(b, l, d), delta=torch.rand(b, l, d, generator=g, dtype=F64) + 0.1,
                A=-torch.rand(d, n, generator=g, dtype=F64) - 0.1, B=r(b, l, n), C=r(b, l, n))


# ------------------------------------------------------------------------------ empty inputs
@pytest.mark.parametrize("b, l", [(0, 5), (2, 0), (0, 0), (0, 70)])
def test_ssd_and_converter_give_empty_outputs_for_empty_batch_or_length(b, l):
    a = _ssd(b, l, D=True, init=True)
    x, dt, A, B, C, D, s0 = (a[k] for k in ("x", "dt", "A", "B", "C", "D", "initial_state"))
    for fn in (ssd_chunked, ssd_ref):
        y, s = fn(x, dt, A, B, C, D=D, initial_state=s0, return_final_state=True, **(
            {"chunk_size": 4} if fn is ssd_chunked else {}))
        assert y.shape == (b, l, 4, 3) and s.shape == (b, 4, 3, 5)
        if l == 0:  # nothing consumed: the state passes through
            torch.testing.assert_close(s, s0)
    state = memory_convert(B, x, dt, A, chunk_size=4, initial_state=s0)
    assert state.shape == (b, 4, 3, 5)
    P = torch.full((b,), l, dtype=torch.long)
    assert memory_convert_masked(B, x, dt, A, P, chunk_size=4).shape == (b, 4, 3, 5)


@pytest.mark.parametrize("b, l", [(0, 5), (2, 0)])
def test_selective_scan_gives_empty_outputs(b, l):
    s = _scan_inputs(b, l)
    for fn in (selective_scan, selective_scan_ref):
        y, h = fn(s["u"], s["delta"], s["A"], s["B"], s["C"], return_final_state=True)
        assert y.shape == (b, l, 3) and h.shape == (b, 3, 2)


# ------------------------------------------------------------------------------ NaN / Inf
def _ssd_call(a):
    return ssd_chunked(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], initial_state=a["initial_state"],
                       chunk_size=4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["x", "dt", "A", "B", "C", "D", "initial_state"])
def test_ssd_chunked_refuses_non_finite_inputs(name, bad):
    a = _ssd(2, 9, D=True, init=True)
    t = {k: (v[:, 4].clone() if k in ("x", "dt", "B", "C") else v.clone()) for k, v in a.items()}
    a[name] = a[name].clone()
    a[name].view(-1)[3] = bad
    with pytest.raises(ValueError, match=rf"^{name} (contains (NaN|Inf)|must be)"):
        _ssd_call(a)
    t[name].view(-1)[1] = bad  # one decoding step too
    step_name = {"initial_state": "state", "A": "A", "D": "D"}.get(name, name + "_t")
    with pytest.raises(ValueError, match=rf"^{step_name} (contains (NaN|Inf)|must be)"):
        ssd_step(t["initial_state"], t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"])


@pytest.mark.parametrize("name", ["K", "V", "dt", "initial_state"])
def test_memory_convert_refuses_non_finite_inputs(name):
    a = _ssd(2, 9, init=True)
    args = {"K": a["B"], "V": a["x"], "dt": a["dt"], "initial_state": a["initial_state"]}
    args[name] = args[name].clone()
    args[name].view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name} (contains NaN|must be)"):
        memory_convert(args["K"], args["V"], args["dt"], a["A"], chunk_size=4, initial_state=args["initial_state"])


def test_memory_convert_masked_ignores_non_finite_past_the_transpoint():
    """The masked converter documents that tokens past P_b are ignored: NaN there is fine, not before."""
    a = _ssd(2, 9)
    K, V = a["B"].clone(), a["x"].clone()
    K[0, 6:] = float("nan")
    P = torch.tensor([6, 9])
    assert torch.isfinite(memory_convert_masked(K, V, a["dt"], a["A"], P, chunk_size=4)).all()
    K[1, 8, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="^K contains Inf"):
        memory_convert_masked(K, V, a["dt"], a["A"], P, chunk_size=4)


@pytest.mark.parametrize("name", ["u", "delta", "A", "B", "C"])
def test_selective_scan_refuses_non_finite_inputs(name):
    s = _scan_inputs(2, 6)
    s[name] = s[name].clone()
    s[name].view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name} (contains NaN|must be)"):
        selective_scan(**s)


def test_finite_checks_can_be_switched_off(monkeypatch):
    """One flag: `validate.CHECK_FINITE` (or the `finite_checks` context) skips the NaN/Inf checks:
    NaN then flows through to the output instead of raising; the sign checks stay on."""
    a = _ssd(1, 6)
    a["x"] = a["x"].clone()
    a["x"][0, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^x contains NaN"):
        _ssd_call(a)
    with finite_checks(False):
        assert torch.isnan(_ssd_call(a)).any()
        with pytest.raises(ValueError, match="^A must be negative"):
            _ssd_call({**a, "A": a["A"].abs()})
    assert validate.CHECK_FINITE is True  # restored
    monkeypatch.setattr(validate, "CHECK_FINITE", False)
    assert torch.isnan(memory_convert(a["B"], a["x"], a["dt"], a["A"])).any()


# ------------------------------------------------------------------------------ A < 0
@pytest.mark.parametrize("value", [0.0, 0.5, -0.0])
def test_non_negative_A_is_refused(value):
    a = _ssd(2, 5)
    A = a["A"].clone()
    A[1] = value
    with pytest.raises(ValueError, match="^A must be negative"):
        ssd_chunked(a["x"], a["dt"], A, a["B"], a["C"])
    with pytest.raises(ValueError, match="^A must be negative"):
        ssd_ref(a["x"], a["dt"], A, a["B"], a["C"])
    with pytest.raises(ValueError, match="^A must be negative"):
        memory_convert(a["B"], a["x"], a["dt"], A)
    s = _scan_inputs(1, 3)
    s["A"][0, 0] = value
    with pytest.raises(ValueError, match="^A must be negative"):
        selective_scan(**s)


# ------------------------------------------------------------------------------ TransPoints
@pytest.mark.parametrize("P, want", [(0, 0), (7, 7), (np.int64(3), 3), (2**31 - 1, 2**31 - 1)])
def test_transpoint_ints_are_accepted(P, want):
    out = check_transpoint(P, 2)
    assert out == want and type(out) is int


def test_transpoint_integer_tensors_are_accepted():
    for dtype in (torch.long, torch.int32, torch.int16):
        out = check_transpoint(torch.tensor([0, 5], dtype=dtype), 2)
        assert out.dtype == torch.long and out.tolist() == [0, 5]


@pytest.mark.parametrize("P", [7.9, 7.0, "7", [[5], [3]], [5, 3], None, True, False, -1,
                               torch.tensor([1.0, 2.0]), torch.tensor([True, False]),
                               torch.tensor([[5], [3]]), torch.tensor(5), torch.tensor([1, 2, 3]),
                               torch.tensor([3, -1])])
def test_bad_transpoints_are_value_errors_naming_the_transpoint(P):
    with pytest.raises(ValueError, match="^transpoint must be"):
        check_transpoint(P, 2)


# ------------------------------------------------------------------------------ gradients
def test_gradients_flow_through_the_checked_ops():
    """The checks read values only (detached): grads of the checked ops equal the reference's."""
    a = _ssd(2, 11, D=True, init=True, grad=True)
    leaves = [a[k] for k in ("x", "dt", "A", "B", "C", "D", "initial_state")]
    y, s = ssd_chunked(*leaves[:5], D=a["D"], initial_state=a["initial_state"], chunk_size=4,
                       return_final_state=True)
    y_r, s_r = ssd_ref(*leaves[:5], D=a["D"], initial_state=a["initial_state"], return_final_state=True)
    g = torch.autograd.grad((y.sum() + s.sum()), leaves)
    g_r = torch.autograd.grad((y_r.sum() + s_r.sum()), leaves)
    for u, v in zip(g, g_r):
        assert torch.isfinite(u).all()
        torch.testing.assert_close(u, v)
    K, V, dt = (a[k] for k in ("B", "x", "dt"))
    gs = torch.autograd.grad(memory_convert(K, V, dt, a["A"], chunk_size=4).sum(), [K, V, dt, a["A"]])
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in gs)
