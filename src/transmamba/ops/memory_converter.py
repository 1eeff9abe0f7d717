"""Memory converter of TransMamba-Switch: the attention prefix's K, V turned into the exact SSM state.

In a TransMamba-Switch layer one projection feeds both paths: attention uses Q = C, K = B, V = x,
and the SSM uses (x, dt, A, B, C). Tokens before the TransPoint P go through causal softmax
attention; tokens from P on go through the SSD scan, which needs the state the scan *would* have
after consuming tokens 0..P-1. Unrolling the recurrence

    state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T

from state_{-1} = S (0 unless an initial state is given) gives, per head,

    state_P = exp(A sum_{i<P} dt_i) S + sum_{i<P} exp(A sum_{j=i+1}^{P-1} dt_j) dt_i V_i K_i^T

with K_i = B_i ("b P g n") and V_i = x_i ("b P h p"). This is a closed form of the recurrence,
not an approximation: the state is a linear function of the prefix's (K, V, dt), every term of the
sum is kept with its exact decay weight, so the scan continued from state_P produces the same
outputs as a scan run over the whole sequence (up to float rounding). Nothing about the prefix
that the SSM could ever read is lost; what attention saw beyond it (the softmax over keys) is a
different function of the same K, V and is not needed by the SSM.

It is computed with the chunk-state and state-passing steps of chunked SSD (`ssd_chunk_state`,
then a decay-weighted sum of the chunk states): matmuls over chunks, no per-token python loop,
and no output computation.
"""

from __future__ import annotations

import torch

from transmamba.ops.ssd import compute_dtype, fp32_state, ssd_chunk_state, sum_after, to_chunks
from transmamba.ops.validate import (check_A_D, check_all_finite, check_chunk_size, check_groups, check_positive,
                                     check_shape, check_ssd_state, check_tensor, check_transpoint)

__all__ = ["memory_convert", "memory_convert_masked"]


def _check_kv(K, V, dt, A, initial_state, chunk_size) -> tuple[int, int, int, int, int, int]:
    """Validate memory-converter arguments; returns (b, P, h, p, g, n)."""
    check_chunk_size(chunk_size)
    check_tensor("V", V, 4, "(b, P, h, p)")
    b, P, h, p = V.shape
    lead_sizes = [(b, f"batch b={b} of V"), (P, f"prefix length P={P} of V")]
    check_shape("K", K, 4, "(b, P, g, n)", lead_sizes)
    g, n = K.shape[2], K.shape[3]
    check_groups("K", K, h, "V")
    check_shape("dt", dt, 3, "(b, P, h)", lead_sizes + [(h, f"heads h={h} of V")])
    check_A_D(A, None, h, "V")
    if initial_state is not None:
        check_ssd_state("initial_state", initial_state, b, h, p, n)
    return b, P, h, p, g, n


def _convert(K, V, dt, A, chunk_size, initial_state, shape) -> torch.Tensor:
    """Unchecked core: dt may be 0 (masked tokens: decay exp(0) = 1, contribution 0)."""
    b, P, h, p, g, n = shape
    r = h // g
    ct = compute_dtype(K.dtype, V.dtype, dt.dtype)
    s0 = None if initial_state is None else initial_state.to(ct)
    if P == 0 or b == 0:
        return V.new_zeros((b, h, p, n), dtype=ct) if s0 is None else s0.clone()
    q = min(chunk_size, P)
    with fp32_state(K.device):  # the state at P in float32, also under bf16 autocast
        xc = to_chunks(V.to(ct), q).unflatten(3, (g, r))  # b c q g r p
        dtc = to_chunks(dt.to(ct), q).unflatten(3, (g, r))  # b c q g r
        Bc = to_chunks(K.to(ct), q)  # b c q g n
        states, dA_chunk = ssd_chunk_state(xc, dtc, A.to(ct).view(g, r), Bc)  # b c g r p n, b c g r
        # state_P = sum_c exp(sum_{c' > c} dA_chunk[c']) states[c]  (+ exp(sum_c dA_chunk[c]) S)
        to_end = torch.exp(sum_after(dA_chunk.movedim(1, -1)))  # b g r c
        state = torch.einsum("bgrc,bcgrpn->bgrpn", to_end, states).reshape(b, h, p, n)
        if s0 is not None:
            state = state + torch.exp(dA_chunk.sum(1)).reshape(b, h, 1, 1) * s0
    return state


def memory_convert(K, V, dt, A, *, chunk_size=64, initial_state=None):
    """SSM state after the prefix, from the attention prefix's keys and values.

        state_P = exp(A sum_{i<P} dt_i) S + sum_{i<P} exp(A sum_{j=i+1}^{P-1} dt_j) dt_i V_i K_i^T

    K "b P g n" (= B), V "b P h p" (= x), dt "b P h" (> 0), A "h", initial_state S "b h p n" | None
    -> state "b h p n" (compute dtype: float32 for fp16/bf16 inputs), so that
    `ssd_chunked(x[:, P:], ..., initial_state=state)` continues the full scan exactly.
    P = 0 or batch 0 gives zeros (or a copy of the initial state). NaN/Inf in K, V, dt or the
    initial state is a ValueError (`transmamba.ops.validate.CHECK_FINITE` switches that off), and
    so is A >= 0.
    """
    shape = _check_kv(K, V, dt, A, initial_state, chunk_size)
    check_all_finite(K=K, V=V, initial_state=initial_state)
    check_positive("dt", dt)
    return _convert(K, V, dt, A, chunk_size, initial_state, shape)


def memory_convert_masked(K, V, dt, A, P, *, chunk_size=64, initial_state=None):
    """`memory_convert` with a different TransPoint per batch row.

        state_b = memory_convert(K[b, :P_b], V[b, :P_b], dt[b, :P_b], A)

    K "b L g n", V "b L h p", dt "b L h", A "h", P "b" (integer, 0 <= P_b <= L),
    initial_state "b h p n" | None -> state "b h p n".
    Tokens i >= P_b get dt = 0 (decay exp(0) = 1 and contribution 0), which leaves exactly the
    state at P_b; their K, V, dt are ignored (they may even be NaN) and receive zero gradient.
    """
    shape = _check_kv(K, V, dt, A, initial_state, chunk_size)
    b, L = shape[0], shape[1]
    if not isinstance(P, torch.Tensor):
        raise ValueError(f"P must be an integer tensor of shape (b,) = ({b},), got {type(P).__name__}")
    P = check_transpoint(P, b, name="P")
    if P.numel() and (int(P.min()) < 0 or int(P.max()) > L):
        raise ValueError(f"P must lie in [0, L={L}], got min {int(P.min())} max {int(P.max())}")
    if P.numel() and int(P.max()) < L:  # nothing after the longest prefix matters
        L = int(P.max())
        K, V, dt = K[:, :L], V[:, :L], dt[:, :L]
        shape = (shape[0], L, *shape[2:])
    keep = torch.arange(L, device=dt.device)[None, :] < P.to(dt.device)[:, None]  # b L
    check_positive("dt", dt[keep])
    zero = torch.zeros((), dtype=dt.dtype, device=dt.device)
    dt = torch.where(keep[..., None], dt, zero)
    V = torch.where(keep[..., None, None], V, torch.zeros((), dtype=V.dtype, device=V.device))
    K = torch.where(keep[..., None, None], K, torch.zeros((), dtype=K.dtype, device=K.device))
    check_all_finite(K=K, V=V, initial_state=initial_state)  # after masking: NaN past P_b is allowed
    return _convert(K, V, dt, A, chunk_size, initial_state, shape)
