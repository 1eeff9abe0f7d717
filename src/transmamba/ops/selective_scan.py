"""Mamba-1 selective scan (diagonal A per channel, B and C shared over channels).

Recurrence, per batch b, channel d, state index n:

    h_t = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * x_t[d]
    y_t[d] = sum_n h_t[d, n] * C_t[n] + D[d] * x_t[d]
    y_t <- y_t * silu(z_t)                                  (if z is given)

Shapes (einops): u/x "(b, l, d)", delta/dt "(b, l, d)" positive, A "(d, n)" negative,
B and C "(b, l, n)", D "(d,)", z "(b, l, d)", state h "(b, d, n)".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.validate import check_all_finite, check_negative, check_positive, check_shape, check_tensor

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_step"]


def _compute_dtype(*ts: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are computed in fp32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _validate(u, delta, A, B, C, D, z, initial_state, *, step: bool = False) -> None:
    """Check ranks, matching sizes, finiteness (`CHECK_FINITE`), A < 0 and delta > 0; raise
    ValueError naming the argument.

    step=True checks one decoding step: no length axis, names u_t, delta_t, B_t, C_t, z_t, state.
    """
    u_, dt_, B_, C_, z_ = (name + "_t" if step else name for name in ("u", "delta", "B", "C", "z"))
    s_ = "state" if step else "initial_state"
    rank, lead = (2, "b") if step else (3, "b, l")
    check_tensor(u_, u, rank, f"({lead}, d)")
    *bl, d = u.shape
    lead_sizes = [(bl[0], f"{u_} batch (b)")] + [(l, "u length (l)") for l in bl[1:]]
    check_shape(dt_, delta, rank, f"({lead}, d)", lead_sizes + [(d, f"{u_} channels (d)")])
    check_shape("A", A, 2, "(d, n)", [(d, f"{u_} channels (d)")])
    n = A.shape[1]
    for name, t in ((B_, B), (C_, C)):
        check_shape(name, t, rank, f"({lead}, n)", lead_sizes + [(n, "A state size (n)")])
    if D is not None:
        check_shape("D", D, 1, "(d,)", [(d, "channels (d)")])
    if z is not None:
        check_shape(z_, z, rank, f"({lead}, d)", [(size, "u") for size in u.shape])
    if initial_state is not None:
        check_shape(s_, initial_state, 3, "(b, d, n)",
                    [(bl[0], "batch (b)"), (d, "channels (d)"), (n, "A state size (n)")])
    check_all_finite(**{u_: u, B_: B, C_: C, "D": D, z_: z, s_: initial_state})
    check_negative("A", A)
    check_positive(dt_, delta)


def _cast_inputs(u, delta, A, B, C, D, z, initial_state):
    """Validated (u, delta, A, B, C, h0) in the compute dtype; h0 = initial_state, or zeros "(b, d, n)"."""
    _validate(u, delta, A, B, C, D, z, initial_state)
    cd = _compute_dtype(u, delta, A, B, C, D, z, initial_state)
    h0 = (initial_state.to(cd) if initial_state is not None
          else u.new_zeros(u.shape[0], u.shape[2], A.shape[1], dtype=cd))
    return (*(t.to(cd) for t in (u, delta, A, B, C)), h0)


def _skip_and_gate(y, uf, D, z, dtype):
    """(y + D * u) * silu(z), the D and z terms only when given, cast to `dtype` (y, uf: compute dtype)."""
    if D is not None:
        y = y + uf * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_ref(u, delta, A, B, C, *, D=None, z=None, initial_state=None,
                       return_final_state=False):
    """Slow sequential reference of the selective scan, one token at a time.

    h_t = exp(delta_t[:, None] * A) * h_{t-1} + delta_t[:, None] * B_t[None, :] * u_t[:, None]
    y_t = h_t @ C_t + D * u_t ;  y_t *= silu(z_t) if z is given.

    u, delta, z: (b, l, d); A: (d, n); B, C: (b, l, n); D: (d,); initial_state: (b, d, n).
    Returns y (b, l, d) in u's dtype, and the final state (b, d, n) if return_final_state.
    """
    uf, dtf, Af, Bf, Cf, h = _cast_inputs(u, delta, A, B, C, D, z, initial_state)
    bsz, l, d = u.shape
    ys = []
    for t in range(l):
        dA = torch.exp(dtf[:, t, :, None] * Af)  # (b, d, n)
        dBu = dtf[:, t, :, None] * Bf[:, t, None, :] * uf[:, t, :, None]  # (b, d, n)
        h = dA * h + dBu
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, t]))
    y = torch.stack(ys, dim=1) if ys else uf.new_zeros(bsz, 0, d)
    y = _skip_and_gate(y, uf, D, z, u.dtype)
    return (y, h) if return_final_state else y


def selective_scan_step(state, u_t, delta_t, A, B_t, C_t, *, D=None, z_t=None):
    """One decoding step of the selective scan.

    h' = exp(delta_t[:, :, None] * A) * h + delta_t[:, :, None] * B_t[:, None, :] * u_t[:, :, None]
    y_t = h' @ C_t + D * u_t ;  y_t *= silu(z_t) if z_t is given.

    state: (b, d, n); u_t, delta_t, z_t: (b, d); A: (d, n); B_t, C_t: (b, n); D: (d,).
    Returns (y_t (b, d) in u_t's dtype, new_state (b, d, n) in the compute dtype).
    """
    _validate(u_t, delta_t, A, B_t, C_t, D, z_t, state, step=True)
    cd = _compute_dtype(state, u_t, delta_t, A, B_t, C_t, D, z_t)
    uf, dtf = u_t.to(cd), delta_t.to(cd)
    h = torch.exp(dtf[:, :, None] * A.to(cd)) * state.to(cd) \
        + dtf[:, :, None] * B_t.to(cd)[:, None, :] * uf[:, :, None]
    y = torch.einsum("bdn,bn->bd", h, C_t.to(cd))
    return _skip_and_gate(y, uf, D, z_t, u_t.dtype), h


def _chunk_inputs(u, delta, At, B, s, e, a_out, x_out):
    """Per-chunk decays and inputs, time-major with d innermost: a = exp(dt A), x = (dt u) B.

    At is A transposed, "(n, d)"; a_out, x_out: "(t, b, n, d)" buffers written in place.
    Returns (dt, dtu) as "(t, b, d)".
    """
    dt = delta[:, s:e].transpose(0, 1).contiguous()  # (t, b, d)
    dtu = dt * u[:, s:e].transpose(0, 1)
    torch.mul(dt[:, :, None, :], At, out=a_out).exp_()
    torch.mul(dtu[:, :, None, :], B[:, s:e].transpose(0, 1)[..., None], out=x_out)
    return dt, dtu


def _chunk_states(a, hbuf, h0):
    """Sequential in-chunk recurrence, in place: hbuf[0] = h0, hbuf[t+1] = a[t] * hbuf[t] + hbuf[t+1].

    On entry hbuf[1:] holds the inputs x; on exit it holds the states h_t. "(t+1, b, n, d)".
    """
    hbuf[0].copy_(h0)
    hs, av = hbuf.unbind(0), a.unbind(0)
    for t in range(len(av)):
        hs[t + 1].addcmul_(av[t], hs[t])


def _contract_n(v, h):
    """out[t, b, d] = sum_n v[t, b, n] h[t, b, n, d], as a batched (1, n) @ (n, d) product."""
    k, bsz, n, d = h.shape
    return torch.bmm(v.reshape(k * bsz, 1, n), h.reshape(k * bsz, n, d)).view(k, bsz, d)


class _SelectiveScanFn(torch.autograd.Function):
    """Chunked scan core y_t = h_t @ C_t (no D, no gate), saving only inputs and chunk-start states.

    Internally the state is laid out "(b, n, d)" (d innermost). The backward recomputes each
    chunk's states and runs the adjoint recurrence in reverse time:
        g_t = C_t gy_t + a_{t+1} g_{t+1},   dL/da_t = g_t h_{t-1},   dL/dx_t = g_t,
    with a_t = exp(dt_t A), x_t = dt_t u_t B_t, and dL/dh_0 = a_1 g_1.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size):
        bsz, l, d = u.shape
        n = A.shape[1]
        T = max(1, min(chunk_size, l))
        starts = list(range(0, l, T))
        At = A.t().contiguous()
        y = u.new_empty(bsz, l, d)
        abuf = u.new_empty(T, bsz, n, d)
        hbuf = u.new_empty(T + 1, bsz, n, d)
        h_starts = u.new_empty(len(starts), bsz, n, d)
        h = h0.transpose(1, 2)
        for c, s in enumerate(starts):
            e = min(s + T, l)
            k = e - s
            a, hb = abuf[:k], hbuf[: k + 1]
            _chunk_inputs(u, delta, At, B, s, e, a, hb[1:])
            h_starts[c].copy_(h)
            _chunk_states(a, hb, h)
            y[:, s:e] = _contract_n(C[:, s:e].transpose(0, 1), hb[1:]).transpose(0, 1)
            h = hb[k].clone()
        ctx.save_for_backward(u, delta, A, B, C, h_starts)
        ctx.T = T
        return y, h.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, gy, gh_last):
        u, delta, A, B, C, h_starts = ctx.saved_tensors
        T = ctx.T
        bsz, l, d = u.shape
        n = A.shape[1]
        At = A.t().contiguous()
        need = ctx.needs_input_grad
        gu = torch.empty_like(u) if need[0] else None
        gdelta = torch.empty_like(delta) if need[1] else None
        gAt = torch.zeros_like(At)
        gB = torch.empty_like(B) if need[3] else None
        gC = torch.empty_like(C) if need[4] else None
        if gy is None:
            gy = torch.zeros_like(u)
        carry = gh_last.transpose(1, 2).clone() if gh_last is not None else u.new_zeros(bsz, n, d)
        abuf = u.new_empty(T, bsz, n, d)
        hbuf = u.new_empty(T + 1, bsz, n, d)
        gbuf = u.new_empty(T, bsz, n, d)
        starts = list(range(0, l, T))
        for c in reversed(range(len(starts))):
            s = starts[c]
            e = min(s + T, l)
            k = e - s
            a, hb, g = abuf[:k], hbuf[: k + 1], gbuf[:k]
            dt, dtu = _chunk_inputs(u, delta, At, B, s, e, a, hb[1:])
            _chunk_states(a, hb, h_starts[c])
            gyc = gy[:, s:e].transpose(0, 1)  # (t, b, d)
            Cc = C[:, s:e].transpose(0, 1)  # (t, b, n)
            if gC is not None:  # dL/dC_t = sum_d gy_t h_t
                gC[:, s:e] = torch.einsum("tbnd,tbd->tbn", hb[1:], gyc).transpose(0, 1)
            # adjoint: g_t = C_t gy_t + a_{t+1} g_{t+1}; g_{k-1} gets the carry from the next chunk
            torch.mul(Cc[..., None], gyc[:, :, None, :], out=g)
            g[k - 1].add_(carry)
            gs, av = g.unbind(0), a.unbind(0)
            for t in range(k - 2, -1, -1):
                gs[t].addcmul_(av[t + 1], gs[t + 1])
            carry = a[0] * g[0]
            gdtu = _contract_n(B[:, s:e].transpose(0, 1), g)  # sum_n g B
            if gB is not None:  # dL/dB_t = sum_d g_t dt_t u_t
                gB[:, s:e] = torch.einsum("tbnd,tbd->tbn", g, dtu).transpose(0, 1)
            # dL/d(dt A) = g_t h_{t-1} a_t, computed in place over g
            g.mul_(hb[:k]).mul_(a)
            if gdelta is not None:
                gdelta[:, s:e] = (gdtu * u[:, s:e].transpose(0, 1) + (g * At).sum(2)).transpose(0, 1)
            if gu is not None:
                gu[:, s:e] = (gdtu * dt).transpose(0, 1)
            if need[2]:
                gAt += (g * dt[:, :, None, :]).sum((0, 1))
        gh0 = carry.transpose(1, 2) if need[5] else None
        return gu, gdelta, gAt.t() if need[2] else None, gB, gC, gh0, None


def selective_scan(u, delta, A, B, C, *, D=None, z=None, initial_state=None,
                   return_final_state=False, chunk_size=64):
    """Chunked selective scan; same equation, shapes and outputs as `selective_scan_ref`.

    h_t = exp(delta_t[:, None] * A) * h_{t-1} + delta_t[:, None] * B_t[None, :] * u_t[:, None]
    y_t = h_t @ C_t + D * u_t ;  y_t *= silu(z_t) if z is given.

    The sequence is cut into chunks of `chunk_size` tokens; within a chunk the decays
    exp(dt A) "(t, b, d, n)" are formed once and the recurrence runs in place. Only the inputs
    and the chunk-start states "(l/chunk, b, d, n)" are kept for backward, which recomputes each
    chunk and runs the adjoint scan in reverse, so peak memory is O(b chunk d n), not O(b l d n).
    bf16/fp16 inputs are computed in float32; y is returned in u's dtype.
    """
    uf, dtf, Af, Bf, Cf, h0 = _cast_inputs(u, delta, A, B, C, D, z, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    y, h = _SelectiveScanFn.apply(uf, dtf, Af, Bf, Cf, h0, chunk_size)
    y = _skip_and_gate(y, uf, D, z, u.dtype)
    return (y, h) if return_final_state else y
