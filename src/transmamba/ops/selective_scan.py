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

from transmamba.ops.validate import check_dim, check_finite, check_tensor

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_step"]


def _compute_dtype(*ts: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are computed in fp32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _validate(u, delta, A, B, C, D, z, initial_state, *, step: bool = False) -> None:
    """Check ranks, matching sizes and finiteness; raise ValueError naming the argument."""
    if step:
        check_tensor("u_t", u, 2, "(b, d)")
        check_tensor("delta_t", delta, 2, "(b, d)")
        bsz, d = u.shape
        check_dim("delta_t", delta, 0, bsz, "u_t batch (b)")
        check_dim("delta_t", delta, 1, d, "u_t channels (d)")
        check_tensor("A", A, 2, "(d, n)")
        check_dim("A", A, 0, d, "u_t channels (d)")
        n = A.shape[1]
        for name, t in (("B_t", B), ("C_t", C)):
            check_tensor(name, t, 2, "(b, n)")
            check_dim(name, t, 0, bsz, "u_t batch (b)")
            check_dim(name, t, 1, n, "A state size (n)")
        zname, zdoc, dname = "z_t", "(b, d)", "delta_t"
        lead = (bsz,)
    else:
        check_tensor("u", u, 3, "(b, l, d)")
        check_tensor("delta", delta, 3, "(b, l, d)")
        bsz, l, d = u.shape
        for i, (size, what) in enumerate(((bsz, "u batch (b)"), (l, "u length (l)"), (d, "u channels (d)"))):
            check_dim("delta", delta, i, size, what)
        check_tensor("A", A, 2, "(d, n)")
        check_dim("A", A, 0, d, "u channels (d)")
        n = A.shape[1]
        for name, t in (("B", B), ("C", C)):
            check_tensor(name, t, 3, "(b, l, n)")
            check_dim(name, t, 0, bsz, "u batch (b)")
            check_dim(name, t, 1, l, "u length (l)")
            check_dim(name, t, 2, n, "A state size (n)")
        zname, zdoc, dname = "z", "(b, l, d)", "delta"
        lead = (bsz, l)
    if D is not None:
        check_tensor("D", D, 1, "(d,)")
        check_dim("D", D, 0, d, "channels (d)")
    if z is not None:
        check_tensor(zname, z, len(lead) + 1, zdoc)
        for i, size in enumerate(lead + (d,)):
            check_dim(zname, z, i, size, "u")
    sname = "state" if step else "initial_state"
    if initial_state is not None:
        check_tensor(sname, initial_state, 3, "(b, d, n)")
        check_dim(sname, initial_state, 0, bsz, "batch (b)")
        check_dim(sname, initial_state, 1, d, "channels (d)")
        check_dim(sname, initial_state, 2, n, "A state size (n)")
    names = [("u_t" if step else "u", u), (dname, delta), ("A", A), ("B_t" if step else "B", B),
             ("C_t" if step else "C", C), ("D", D), (zname, z), (sname, initial_state)]
    for name, t in names:
        if t is not None:
            check_finite(name, t)
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        if delta.numel() and not bool((delta > 0).all()):
            raise ValueError(f"{dname} must be positive (softplus already applied), "
                             f"got min {delta.min().item():.3g} (shape {tuple(delta.shape)})")


def selective_scan_ref(u, delta, A, B, C, *, D=None, z=None, initial_state=None,
                       return_final_state=False):
    """Slow sequential reference of the selective scan, one token at a time.

    h_t = exp(delta_t[:, None] * A) * h_{t-1} + delta_t[:, None] * B_t[None, :] * u_t[:, None]
    y_t = h_t @ C_t + D * u_t ;  y_t *= silu(z_t) if z is given.

    u, delta, z: (b, l, d); A: (d, n); B, C: (b, l, n); D: (d,); initial_state: (b, d, n).
    Returns y (b, l, d) in u's dtype, and the final state (b, d, n) if return_final_state.
    """
    _validate(u, delta, A, B, C, D, z, initial_state)
    cd = _compute_dtype(u, delta, A, B, C, D, z, initial_state)
    bsz, l, d = u.shape
    n = A.shape[1]
    uf, dtf, Af, Bf, Cf = (t.to(cd) for t in (u, delta, A, B, C))
    h = (initial_state.to(cd) if initial_state is not None
         else uf.new_zeros(bsz, d, n))
    ys = []
    for t in range(l):
        dA = torch.exp(dtf[:, t, :, None] * Af)  # (b, d, n)
        dBu = dtf[:, t, :, None] * Bf[:, t, None, :] * uf[:, t, :, None]  # (b, d, n)
        h = dA * h + dBu
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, t]))
    y = torch.stack(ys, dim=1) if ys else uf.new_zeros(bsz, 0, d)
    if D is not None:
        y = y + uf * D.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(u.dtype)
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
    if D is not None:
        y = y + uf * D.to(cd)
    if z_t is not None:
        y = y * F.silu(z_t.to(cd))
    return y.to(u_t.dtype), h


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
    _validate(u, delta, A, B, C, D, z, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    cd = _compute_dtype(u, delta, A, B, C, D, z, initial_state)
    bsz, l, d = u.shape
    n = A.shape[1]
    uf, dtf, Af, Bf, Cf = (t.to(cd) for t in (u, delta, A, B, C))
    h0 = initial_state.to(cd) if initial_state is not None else uf.new_zeros(bsz, d, n)
    y, h = _SelectiveScanFn.apply(uf, dtf, Af, Bf, Cf, h0, chunk_size)
    if D is not None:
        y = y + uf * D.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(u.dtype)
    return (y, h) if return_final_state else y
