"""Mamba-2 state-space duality (SSD) scan: a sequential reference, a chunked fast path, one step.

Recurrence (per batch b and head h; state is (p, n), head h reads group h // (h / g) of B, C):

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T
    y_t     = state_t C_t + D * x_t

Shapes (einops): x "b l h p", dt "b l h" (> 0, softplus and bias already applied), A "h" (< 0),
B and C "b l g n", D "h" or None, state "b h p n".

`ssd_ref` is the plain loop over time; `ssd_chunked` is the four-step chunked algorithm of the
Mamba-2 paper (intra-chunk quadratic form, per-chunk states, state passing between chunks,
state-to-output) written with matmuls; `ssd_step` is one token of the recurrence for decoding.
Half-precision inputs are computed in float32 and the output is cast back to x's dtype; final
states are returned in the compute dtype (float32 for fp16/bf16 inputs).

Under `torch.autocast` (bf16 training, `train.amp: bf16`) the intra-chunk products (step 1) and the
state-to-output product (step 4) run in bf16 with fp32 accumulation, while everything that forms the
SSM state -- the per-chunk states (step 2), the state passing (step 3) and so the final state, and
the memory converter's state at P -- runs with autocast off, in float32 (`fp32_state`).

Every entry point checks its arguments (`transmamba.ops.validate`): shapes, dt > 0, A < 0, and no
NaN/Inf in x, dt, A, B, C, D or the state (the finiteness checks can be switched off with
`validate.CHECK_FINITE = False`). Batch 0 or length 0 give empty outputs of the right shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.validate import (check_A_D, check_all_finite, check_chunk_size, check_groups,
                                     check_positive, check_shape, check_ssd_state, check_tensor)

__all__ = [
    "ssd_ref",
    "ssd_chunked",
    "ssd_step",
    "ssd_step_ref",
    "ssd_chunk_state",
    "ssd_state_passing",
    "segsum",
    "sum_after",
    "to_chunks",
    "compute_dtype",
]


# ----------------------------------------------------------------------------------- validation


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 accumulate in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _check_args(x, dt, A, B, C, D, state, *, step: bool = False) -> tuple[int, ...]:
    """Validate full-sequence arguments and return (b, l, h, p, g, n); with step=True, those of one
    decoding step (no length axis, names x_t, dt_t, B_t, C_t, state required) and (b, h, p, g, n)."""
    x_, dt_, B_, C_ = (name + "_t" if step else name for name in ("x", "dt", "B", "C"))
    lead = "b" if step else "b, l"
    check_tensor(x_, x, 3 if step else 4, f"({lead}, h, p)")
    *bl, h, p = x.shape
    lead_sizes = [(size, f"{what}={size} of {x_}") for size, what in zip(bl, ("batch b", "length l"))]
    check_shape(dt_, dt, len(bl) + 1, f"({lead}, h)", lead_sizes + [(h, f"heads h={h} of {x_}")])
    check_shape(B_, B, len(bl) + 2, f"({lead}, g, n)", lead_sizes)
    g, n = B.shape[-2:]
    check_shape(C_, C, len(bl) + 2, f"({lead}, g, n)",
                lead_sizes + [(g, f"groups g={g} of {B_}"), (n, f"state dim n={n} of {B_}")])
    check_groups(B_, B, h, x_)
    check_A_D(A, D, h, x_)
    s_ = "state" if step else "initial_state"
    if step or state is not None:
        check_ssd_state(s_, state, bl[0], h, p, n)
    check_all_finite(**{x_: x, B_: B, C_: C, s_: state, "D": D})
    check_positive(dt_, dt)
    return (*bl, h, p, g, n)


# ------------------------------------------------------------------------------------ reference


def _step(state, x_t, dt_t, A, B_t, C_t, r: int):
    """One recurrence step in the compute dtype; B_t/C_t "b g n" are expanded to heads here.

    state "b h p n", x_t "b h p", dt_t "b h"  ->  (y_t "b h p" without D, new state).
    """
    B_h = B_t.repeat_interleave(r, dim=1) if r > 1 else B_t  # b h n
    C_h = C_t.repeat_interleave(r, dim=1) if r > 1 else C_t
    decay = torch.exp(dt_t * A)  # b h
    state = decay[..., None, None] * state + (dt_t[..., None] * x_t)[..., :, None] * B_h[..., None, :]
    y_t = (state @ C_h[..., None])[..., 0]  # "b h p n, b h n -> b h p"
    return y_t, state


def ssd_ref(x, dt, A, B, C, *, D=None, initial_state=None, return_final_state=False):
    """Sequential SSD scan, one python step per token (the reference; slow but obviously right).

        state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T ;   y_t = state_t C_t + D x_t

    x "b l h p", dt "b l h", A "h", B/C "b l g n", D "h" | None, initial_state "b h p n" | None
    -> y "b l h p" (x's dtype) [, final_state "b h p n" (compute dtype)].
    """
    b, l, h, p, g, n = _check_args(x, dt, A, B, C, D, initial_state)
    ct = compute_dtype(x.dtype, dt.dtype, B.dtype, C.dtype)
    r = h // g
    xs = x.to(ct)
    dts = dt.to(ct)
    decay = torch.exp(dts * A.to(ct))  # b l h
    dtx = dts[..., None] * xs  # b l h p
    B_h = B.to(ct).repeat_interleave(r, dim=2)  # b l h n (per-head copies: fine for a reference)
    C_h = C.to(ct).repeat_interleave(r, dim=2)
    if initial_state is None:
        state = x.new_zeros((b, h, p, n), dtype=ct)
    else:
        state = initial_state.to(ct)
    ys = []
    for t in range(l):
        state = decay[:, t, :, None, None] * state + dtx[:, t, :, :, None] * B_h[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_h[:, t]))
    y = torch.stack(ys, dim=1) if ys else xs.new_zeros((b, 0, h, p))
    if D is not None:
        y = y + D.to(ct)[:, None] * xs
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y


def ssd_step_ref(state, x_t, dt_t, A, B_t, C_t, *, D=None):
    """Reference of `ssd_step`: the recurrence written out with B_t/C_t repeated for every head.

    state "b h p n", x_t "b h p", dt_t "b h", A "h", B_t/C_t "b g n", D "h" | None
    -> (y_t "b h p" in x_t's dtype, new_state "b h p n" in the compute dtype).
    """
    b, h, p, g, n = _check_args(x_t, dt_t, A, B_t, C_t, D, state, step=True)
    ct = compute_dtype(x_t.dtype, dt_t.dtype, B_t.dtype, C_t.dtype, state.dtype)
    x32 = x_t.to(ct)
    y_t, new_state = _step(state.to(ct), x32, dt_t.to(ct), A.to(ct), B_t.to(ct), C_t.to(ct), h // g)
    if D is not None:
        y_t = y_t + D.to(ct)[:, None] * x32
    return y_t.to(x_t.dtype), new_state


def ssd_step(state, x_t, dt_t, A, B_t, C_t, *, D=None, check: bool = True):
    """One decoding step of the SSD recurrence.

        new_state = exp(dt_t A) state + dt_t x_t B_t^T ;   y_t = new_state C_t + D x_t

    state "b h p n", x_t "b h p", dt_t "b h", A "h", B_t/C_t "b g n", D "h" | None
    -> (y_t "b h p" in x_t's dtype, new_state "b h p n" in the compute dtype).

    The r = h / g heads of a group share B_t and C_t, so with h split as (g r) the update is one
    batched outer product and the read-out one batched matvec, "(b g) (r p) n", without copying
    B_t/C_t per head: a handful of ops per step (at batch 1 the small ops and Python are about
    half of a decoding step on a CPU, the weight matmuls the rest).
    Autocast is off inside (the state stays in the compute dtype). Equals `ssd_step_ref`.

    check=False skips the argument checks (shapes, signs, finiteness): for a caller that built the
    arguments itself, as a mixer's decoding step does (dt = softplus(.), A = -exp(A_log)).
    """
    if check:
        b, h, p, g, n = _check_args(x_t, dt_t, A, B_t, C_t, D, state, step=True)
    else:
        (b, h, p), (g, n) = x_t.shape, B_t.shape[-2:]
    ct = compute_dtype(x_t.dtype, dt_t.dtype, B_t.dtype, C_t.dtype, state.dtype)
    r = h // g
    with fp32_state(x_t.device):
        x32, dt32 = x_t.to(ct), dt_t.to(ct)
        decayed = state.to(ct) * torch.exp(dt32 * A.to(ct))[..., None, None]  # b h p n
        dtx = dt32[..., None] * x32  # b h p
        new_state = torch.baddbmm(decayed.view(b * g, r * p, n), dtx.reshape(b * g, r * p, 1),
                                  B_t.to(ct).reshape(b * g, 1, n))  # "(b g) (r p) n"
        y_t = torch.bmm(new_state, C_t.to(ct).reshape(b * g, n, 1)).view(b, h, p)
        if D is not None:
            y_t = y_t + D.to(ct)[:, None] * x32
    return y_t.to(x_t.dtype), new_state.view(b, h, p, n)


# ------------------------------------------------------------------------------- chunked pieces


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable masked segment sum over the last axis.

        out[..., i, j] = sum_{k=j+1}^{i} a[..., k]   (i >= j; 0 on the diagonal),  -inf for i < j

    a "... t" -> "... t t". Built as a cumsum of a strictly-lower-masked copy, so no difference of
    two long cumsums is ever taken (no cancellation); with a <= 0 every finite entry is <= 0 and
    exp(out) is the causal decay matrix with exact zeros above the diagonal.
    """
    t = a.shape[-1]
    ones = torch.ones(t, t, dtype=torch.bool, device=a.device)
    a = a[..., None].expand(*a.shape, t)  # [..., i, j] = a_i
    a = a.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)
    s = torch.cumsum(a, dim=-2)
    return s.masked_fill(~torch.tril(ones), float("-inf"))


def sum_after(a: torch.Tensor) -> torch.Tensor:
    """out[..., j] = sum_{k>j} a[..., k] (exclusive reverse cumsum, no subtraction)."""
    return F.pad(a[..., 1:], (0, 1)).flip(-1).cumsum(-1).flip(-1)


def to_chunks(t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Zero-pad the length axis (dim 1) to a multiple of chunk_size and split it: "b (c q) ..." ->
    "b c q ...". Zero dt on padded tokens means decay exp(0)=1 and no contribution."""
    l = t.shape[1]
    pad = (-l) % chunk_size
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.view(t.shape[0], -1, chunk_size, *t.shape[2:])


def fp32_state(device: torch.device):
    """Autocast off inside: the SSM state is formed in the compute dtype (float32), not bf16."""
    return torch.autocast(device_type=device.type, enabled=False)


def ssd_chunk_state(xc, dtc, A, Bc):
    """Step 2 of chunked SSD: the state each chunk produces on its own (from a zero state).

        states[c] = sum_{j in chunk c} exp(A * sum_{k>j, k in c} dt_k) * dt_j * x_j B_j^T
        dA_chunk[c] = A * sum_{j in c} dt_j        (log of the chunk's total decay)

    xc "b c q g r p", dtc "b c q g r", A "g r", Bc "b c q g n" (already chunked, compute dtype; h is
    split as (g r))  ->  (states "b c g r p n", dA_chunk "b c g r").
    """
    dA = (dtc * A).permute(0, 1, 3, 4, 2)  # b c g r q
    return _chunk_states(xc * dtc[..., None], dA, Bc), dA.sum(-1)


def _chunk_states(xdt, dA, Bc):
    """states[c] = sum_j exp(sum_{k>j} dA_k) xdt_j B_j^T: xdt "b c q g r p", dA "b c g r q"."""
    w = torch.exp(sum_after(dA)).permute(0, 1, 4, 2, 3)  # b c q g r: decay from j to chunk end
    return torch.einsum("bcjgn,bcjgrp->bcgrpn", Bc, xdt * w[..., None])


def ssd_state_passing(states, dA_chunk, initial_state=None):
    """Step 3 of chunked SSD: carry the state across chunks.

        S_0 = initial_state (or 0);   S_{c+1} = exp(dA_chunk[c]) S_c + states[c]

    states "b c g r p n", dA_chunk "b c g r", initial_state "b g r p n" | None
    -> (prev "b c g r p n" = state entering each chunk, final "b g r p n").
    A short python recurrence over chunks (not tokens): l / chunk_size cheap elementwise steps.
    """
    s = torch.zeros_like(states[:, 0]) if initial_state is None else initial_state
    decay = torch.exp(dA_chunk)[..., None, None]
    prev = []
    # unbind (not states[:, c]): its backward stacks the grads once instead of scattering each
    # step's grad into a zero tensor of the full size
    for decay_c, states_c in zip(decay.unbind(1), states.unbind(1)):
        prev.append(s)
        s = decay_c * s + states_c
    return torch.stack(prev, dim=1), s


def ssd_chunked(x, dt, A, B, C, *, chunk_size=64, D=None, initial_state=None, return_final_state=False):
    """Chunked SSD (Mamba-2, four steps), same result as `ssd_ref` up to rounding.

    With the sequence cut into chunks of q tokens and cs the in-chunk inclusive cumsum of dt*A:
      1. y_diag[i] = sum_{j<=i in chunk} (C_i . B_j) exp(segsum(dt A))[i, j] dt_j x_j
      2. states[c] = sum_j exp(A sum_{k>j} dt_k) dt_j x_j B_j^T          (per chunk, from zero)
      3. S_{c+1} = exp(A sum_{chunk c} dt) S_c + states[c],  S_0 = initial_state
      4. y_off[i] = exp(cs_i) S_c C_i ;   y = y_diag + y_off + D x

    x "b l h p", dt "b l h", A "h", B/C "b l g n", D "h" | None, initial_state "b h p n" | None
    -> y "b l h p" (x's dtype) [, final_state "b h p n" (compute dtype)].
    Any l (padded inside to a multiple of chunk_size); fp16/bf16 accumulate in float32.
    """
    check_chunk_size(chunk_size)
    b, l, h, p, g, n = _check_args(x, dt, A, B, C, D, initial_state)
    ct = compute_dtype(x.dtype, dt.dtype, B.dtype, C.dtype)
    r = h // g
    if l == 0 or b == 0:  # nothing to scan: empty y, the state passes through unchanged
        y = x.new_zeros((b, l, h, p))
        if not return_final_state:
            return y
        s = x.new_zeros((b, h, p, n), dtype=ct) if initial_state is None else initial_state.to(ct)
        return y, s
    q = min(chunk_size, l)  # a single short chunk needs no padding
    xc = to_chunks(x.to(ct), q).unflatten(3, (g, r))  # b c q g r p
    dtc = to_chunks(dt.to(ct), q).unflatten(3, (g, r))  # b c q g r
    Bc = to_chunks(B.to(ct), q)  # b c q g n
    Cc = to_chunks(C.to(ct), q)
    A_gr = A.to(ct).view(g, r)

    # 1. intra-chunk: masked decay matrix times C B^T, applied to dt*x
    dA = (dtc * A_gr).permute(0, 1, 3, 4, 2)  # b c g r q
    Lmat = torch.exp(segsum(dA))  # b c g r q q
    CB = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc)  # b c g q q (shared by the r heads of a group)
    xdt = xc * dtc[..., None]
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", CB[:, :, :, None] * Lmat, xdt)

    # 2. per-chunk states (the step the memory converter is built on) and 3. state passing, in fp32
    with fp32_state(x.device):
        states, dA_chunk = _chunk_states(xdt, dA, Bc), dA.sum(-1)  # = ssd_chunk_state(xc, dtc, A_gr, Bc)
        s0 = None if initial_state is None else initial_state.to(ct).reshape(b, g, r, p, n)
        prev, final = ssd_state_passing(states, dA_chunk, s0)

    # 4. state -> output, decayed from the chunk start to each token
    decay_in = torch.exp(torch.cumsum(dA, dim=-1)).permute(0, 1, 4, 2, 3)  # b c q g r
    y = torch.addcmul(y, torch.einsum("bcign,bcgrpn->bcigrp", Cc, prev), decay_in[..., None])

    y = y.reshape(b, -1, h, p)[:, :l]
    if D is not None:
        y = torch.addcmul(y, x.to(ct), D.to(ct)[:, None])
    y = y.to(x.dtype)
    return (y, final.reshape(b, h, p, n)) if return_final_state else y
