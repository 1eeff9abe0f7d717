"""Chunked selective scan vs its sequential reference: values, gradients, decoding steps, input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.ops.selective_scan import selective_scan, selective_scan_ref, selective_scan_step

F64 = torch.float64


def make_inputs(b, l, d, n, *, seed=0, dtype=F64, dt_scale=1.0):
    """Random inputs: delta > 0, A < 0; D, z, h0 always built (callers drop what they don't use)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    u = r(b, l, d)
    delta = torch.nn.functional.softplus(r(b, l, d)) * dt_scale
    A = -torch.exp(r(d, n))
    B, C = r(b, l, n), r(b, l, n)
    D, z, h0 = r(d), r(b, l, d), r(b, d, n)
    return {k: v.to(dtype) for k, v in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, h0=h0).items()}


def run_both(ins, *, use_D, use_z, use_h0, chunk_size):
    """Outputs and gradients of (ref, fast) for the same inputs and the same random cotangents."""
    results = []
    for fn, kw in ((selective_scan_ref, {}), (selective_scan, {"chunk_size": chunk_size})):
        leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
        y, h = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                  D=leaves["D"] if use_D else None, z=leaves["z"] if use_z else None,
                  initial_state=leaves["h0"] if use_h0 else None, return_final_state=True, **kw)
        g = torch.Generator().manual_seed(123)
        gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
        gh = torch.randn(h.shape, generator=g, dtype=h.dtype)
        ((y * gy).sum() + (h * gh).sum()).backward()
        used = {"u", "delta", "A", "B", "C"} | ({"D"} if use_D else set()) \
            | ({"z"} if use_z else set()) | ({"h0"} if use_h0 else set())
        results.append((y.detach(), h.detach(), {k: leaves[k].grad for k in used}))
    return results


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), l=st.integers(1, 23), d=st.integers(1, 4), n=st.integers(1, 4),
       chunk_size=st.integers(1, 9), use_D=st.booleans(), use_z=st.booleans(),
       use_h0=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_ref_values_and_grads(b, l, d, n, chunk_size, use_D, use_z, use_h0, seed):
    ins = make_inputs(b, l, d, n, seed=seed)
    (y0, h0, g0), (y1, h1, g1) = run_both(ins, use_D=use_D, use_z=use_z, use_h0=use_h0,
                                          chunk_size=chunk_size)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h1, h0, rtol=1e-10, atol=1e-10)
    assert g0.keys() == g1.keys()
    for k in g0:
        assert g1[k] is not None, k
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-9, atol=1e-9, msg=lambda m: f"grad {k}: {m}")


@pytest.mark.parametrize("l,chunk_size", [(1, 64), (5, 64), (16, 4), (17, 4), (7, 1)])
def test_edge_lengths(l, chunk_size):
    """L = 1, L < chunk, L a multiple of the chunk, one past it, chunk 1."""
    ins = make_inputs(2, l, 3, 2, seed=l)
    (y0, h0, g0), (y1, h1, g1) = run_both(ins, use_D=True, use_z=True, use_h0=True,
                                          chunk_size=chunk_size)
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(h1, h0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k])


def test_default_chunk_long_sequence_and_default_return():
    """Several default-size chunks; return_final_state=False returns y only, equal to the ref."""
    ins = make_inputs(1, 150, 4, 3, seed=1)
    args = [ins[k] for k in ("u", "delta", "A", "B", "C")]
    y = selective_scan(*args, D=ins["D"])
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, selective_scan_ref(*args, D=ins["D"]))


def test_gradient_through_final_state_only():
    """A loss on the final state alone: gy is absent in backward."""
    ins = make_inputs(2, 11, 3, 2, seed=5)
    grads = []
    for fn, kw in ((selective_scan_ref, {}), (selective_scan, {"chunk_size": 4})):
        leaves = [ins[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "h0")]
        _, h = fn(*leaves[:5], initial_state=leaves[5], return_final_state=True, **kw)
        h.square().sum().backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)


def test_step_token_by_token_matches_ref():
    ins = make_inputs(2, 9, 4, 3, seed=2)
    y_ref, h_ref = selective_scan_ref(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], D=ins["D"],
                                      z=ins["z"], initial_state=ins["h0"], return_final_state=True)
    state = ins["h0"]
    for t in range(9):
        y_t, state = selective_scan_step(state, ins["u"][:, t], ins["delta"][:, t], ins["A"],
                                         ins["B"][:, t], ins["C"][:, t], D=ins["D"], z_t=ins["z"][:, t])
        torch.testing.assert_close(y_t, y_ref[:, t])
    torch.testing.assert_close(state, h_ref)


@pytest.mark.parametrize("prefix", [1, 6, 12])
def test_prefill_then_steps_equals_full_forward(prefix):
    """selective_scan on tokens [0, P) with its final state, then steps on [P, L) == full forward."""
    L = 15
    ins = make_inputs(1, L, 5, 4, seed=prefix)
    a = lambda k, sl: ins[k][:, sl]  # noqa: E731
    y_full = selective_scan(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], D=ins["D"], z=ins["z"],
                            chunk_size=4)
    pre = slice(0, prefix)
    y_pre, state = selective_scan(a("u", pre), a("delta", pre), ins["A"], a("B", pre), a("C", pre),
                                  D=ins["D"], z=a("z", pre), return_final_state=True, chunk_size=4)
    torch.testing.assert_close(y_pre, y_full[:, :prefix])
    for t in range(prefix, L):
        y_t, state = selective_scan_step(state, ins["u"][:, t], ins["delta"][:, t], ins["A"],
                                         ins["B"][:, t], ins["C"][:, t], D=ins["D"], z_t=ins["z"][:, t])
        torch.testing.assert_close(y_t, y_full[:, t])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs(dtype, tol):
    """fp32 and bf16 inputs (bf16 computed in fp32) stay close to the float64 reference."""
    ins = make_inputs(2, 70, 6, 4, seed=3)
    low = {k: v.to(dtype) for k, v in ins.items()}
    args = lambda d: [d[k] for k in ("u", "delta", "A", "B", "C")]  # noqa: E731
    y = selective_scan(*args(low), D=low["D"], z=low["z"], initial_state=low["h0"])
    assert y.dtype == dtype
    y_ref = selective_scan_ref(*[t.double() for t in args(low)], D=low["D"].double(),
                               z=low["z"].double(), initial_state=low["h0"].double())
    scale = y_ref.abs().max()
    assert (y.double() - y_ref).abs().max() <= tol * scale


def test_strong_decay_stays_finite_in_float32():
    """Very negative dt A (exp underflows to 0) must not produce NaN/Inf in values or grads."""
    ins = make_inputs(1, 40, 3, 2, seed=4, dtype=torch.float32, dt_scale=200.0)
    leaves = [ins[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    y = selective_scan(*leaves, chunk_size=8)
    torch.testing.assert_close(y, selective_scan_ref(*leaves))
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in leaves)


def test_backward_saves_no_full_state_tensor():
    """Saved activations are O(l (d + n) + l/chunk d n), never the O(l d n) states."""
    b, L, d, n, chunk = 1, 256, 8, 16, 32
    ins = make_inputs(b, L, d, n, seed=6, dtype=torch.float32)
    leaves = [ins[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = selective_scan(*leaves, D=ins["D"], z=ins["z"], chunk_size=chunk)
    assert max(saved) < b * L * d * n / 4
    assert sum(saved) < b * L * d * n
    y.sum().backward()


def _good():
    ins = make_inputs(2, 5, 3, 4)
    return [ins[k] for k in ("u", "delta", "A", "B", "C")], ins


@pytest.mark.parametrize("which,bad,match", [
    ("u", lambda i: i["u"][0], "u"),
    ("delta", lambda i: i["delta"][:, :4], "delta"),
    ("delta", lambda i: -i["delta"], "delta must be positive"),
    ("delta", lambda i: torch.zeros_like(i["delta"]), "delta must be positive"),
    ("A", lambda i: i["A"][:2], "A"),
    ("B", lambda i: i["B"][..., :3], "B"),
    ("C", lambda i: i["C"][:1], "C"),
    ("u", lambda i: i["u"].masked_fill(i["u"] > 1, float("nan")), "u contains NaN"),
    ("B", lambda i: i["B"].masked_fill(i["B"] > 1, float("inf")), "B contains Inf"),
])
def test_bad_input_raises_naming_argument(which, bad, match):
    args, ins = _good()
    names = ["u", "delta", "A", "B", "C"]
    args[names.index(which)] = bad(ins)
    for fn in (selective_scan, selective_scan_ref):
        with pytest.raises(ValueError, match=match):
            fn(*args)


@pytest.mark.parametrize("kw,match", [
    (lambda i: {"D": i["D"][:2]}, "D"),
    (lambda i: {"z": i["z"][:, :, :2]}, "z"),
    (lambda i: {"initial_state": i["h0"][..., :3]}, "initial_state"),
    (lambda i: {"chunk_size": 0}, "chunk_size"),
])
def test_bad_optional_input_raises(kw, match):
    args, ins = _good()
    with pytest.raises(ValueError, match=match):
        selective_scan(*args, **kw(ins))


def test_step_bad_input_raises():
    ins = make_inputs(2, 1, 3, 4)
    state, u_t, dt_t = ins["h0"], ins["u"][:, 0], ins["delta"][:, 0]
    B_t, C_t = ins["B"][:, 0], ins["C"][:, 0]
    with pytest.raises(ValueError, match="state"):
        selective_scan_step(state[..., :2], u_t, dt_t, ins["A"], B_t, C_t)
    with pytest.raises(ValueError, match="B_t"):
        selective_scan_step(state, u_t, dt_t, ins["A"], B_t[:, :2], C_t)
    with pytest.raises(ValueError, match="delta_t must be positive"):
        selective_scan_step(state, u_t, -dt_t, ins["A"], B_t, C_t)
    with pytest.raises(ValueError, match="u_t"):
        selective_scan_step(state, ins["u"], dt_t, ins["A"], B_t, C_t)
