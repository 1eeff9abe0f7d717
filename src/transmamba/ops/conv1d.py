"""Causal depthwise 1-D convolution over time, channels-last, with a rolling state for decoding.

For each channel c with kernel w[c, 0..k-1] (w[c, k-1] multiplies the newest input):

    y[t, c] = act( bias[c] + sum_{i=0}^{k-1} w[c, i] * x[t - (k-1) + i, c] )

where inputs before t = 0 are zeros, or the previous k-1 inputs given as `initial_state`.
The state after a sequence is its last k-1 inputs (older first), "b c (k-1)", so that
`causal_conv1d(x[:, :s]) ++ causal_conv1d(x[:, s:], initial_state=state)` equals the full call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from transmamba.ops.validate import check_dim, check_tensor

_ACTIVATIONS = (None, "silu")


def _check_args(x, weight, bias, activation) -> tuple[int, int, int, int]:
    """Validate x "b l c", weight "c k", bias "c"; returns (b, l, c, k)."""
    check_tensor("x", x, 3, "(b, l, c)")
    check_tensor("weight", weight, 2, "(c, k)")
    b, l, c = x.shape
    check_dim("weight", weight, 0, c, "x channels (x.shape[-1])")
    k = weight.shape[1]
    if k < 1:
        raise ValueError(f"weight must have kernel width k >= 1, got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, 1, "(c,)")
        check_dim("bias", bias, 0, c, "x channels (x.shape[-1])")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return b, l, c, k


def _check_state(name: str, state, b: int, c: int, k: int) -> None:
    check_tensor(name, state, 3, "(b, c, k-1)")
    check_dim(name, state, 0, b, "x batch")
    check_dim(name, state, 1, c, "x channels")
    check_dim(name, state, 2, k - 1, "weight kernel width - 1")


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


class _ShiftConvFn(torch.autograd.Function):
    """y = act(bias + sum_i wt[i] * xp[:, i : i + l]) on the padded input xp "b (k-1+l) c".

    Backward by hand (dy = act'(y) g):  dxp[:, i : i + l] += wt[i] * dy,
    dwt[i] = sum_{b,t} dy * xp[:, i : i + l],  dbias = sum_{b,t} dy.
    """

    @staticmethod
    def forward(ctx, xp, wt, bias, silu: bool):
        k = wt.shape[0]
        l = xp.shape[1] - k + 1
        y = xp[:, :l] * wt[0] if bias is None else torch.addcmul(bias, xp[:, :l], wt[0])
        for i in range(1, k):
            y.addcmul_(xp[:, i:i + l], wt[i])
        ctx.silu, ctx.has_bias = silu, bias is not None
        ctx.save_for_backward(xp, wt, y if silu else None)
        return F.silu(y) if silu else y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        xp, wt, y = ctx.saved_tensors
        k = wt.shape[0]
        l = xp.shape[1] - k + 1
        dy = torch.ops.aten.silu_backward(g, y) if ctx.silu else g
        dxp = torch.empty_like(xp)
        torch.mul(dy, wt[0], out=dxp[:, :l])
        dxp[:, l:].zero_()
        for i in range(1, k):
            dxp[:, i:i + l].addcmul_(dy, wt[i])
        dwt = torch.stack([(dy * xp[:, i:i + l]).sum((0, 1)) for i in range(k)])
        return dxp, dwt, dy.sum((0, 1)) if ctx.has_bias else None, None


def causal_conv1d(x, weight, bias=None, *, initial_state=None, return_final_state=False,
                  activation=None):
    """Causal depthwise conv over time as k shifted multiply-adds, channels-last throughout.

    y[:, t] = act(bias + sum_i weight[:, i] * x_pad[:, t + i]),  x_pad = [state | x] along time.

    x: "b l c"; weight: "c k"; bias: "c" or None; initial_state: "b c (k-1)" (the k-1 inputs
    before x, older first) or None for zeros; activation: None | "silu".
    Returns y "b l c" (contiguous) and, if `return_final_state`, the final state "b c (k-1)".
    On CPU, k fused multiply-adds in "b l c" layout with a hand-written backward beat a depthwise
    F.conv1d (which needs two transposes and has a slow backward); `causal_conv1d_ref` is the twin.
    """
    b, l, c, k = _check_args(x, weight, bias, activation)
    if initial_state is not None:
        _check_state("initial_state", initial_state, b, c, k)
        xp = torch.cat([initial_state.to(x.dtype).transpose(1, 2), x], dim=1)  # b (k-1+l) c
    else:
        xp = F.pad(x, (0, 0, k - 1, 0))
    if l == 0:  # nothing to convolve; the state is unchanged
        y = x.new_zeros(b, 0, c)
    else:
        wt = weight.to(x.dtype).t().contiguous()  # "k c": rows broadcast over "b l c"
        bias = None if bias is None else bias.to(x.dtype)
        y = _ShiftConvFn.apply(xp, wt, bias, activation == "silu")
    if return_final_state:
        return y, xp[:, xp.shape[1] - (k - 1):].transpose(1, 2).contiguous()
    return y


def causal_conv1d_ref(x, weight, bias=None, *, initial_state=None, return_final_state=False,
                      activation=None):
    """Reference: one python step per token, y_t = act(bias + sum_i weight[:, i] * window_t[:, i]).

    Same arguments and results as `causal_conv1d`.
    """
    b, l, c, k = _check_args(x, weight, bias, activation)
    if initial_state is not None:
        _check_state("initial_state", initial_state, b, c, k)
        state = initial_state.to(x.dtype)
    else:
        state = x.new_zeros(b, c, k - 1)
    ys = []
    for t in range(l):
        y_t, state = causal_conv1d_step(state, x[:, t], weight, bias, activation)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, c)
    return (y, state) if return_final_state else y


def causal_conv1d_step(state, x_t, weight, bias=None, activation=None, *, check: bool = True):
    """One decoding step with a rolling window.

    window = [state | x_t] ("b c k"),  y_t = act(bias + sum_i weight[:, i] * window[:, :, i]),
    new_state = window[:, :, 1:].

    state: "b c (k-1)"; x_t: "b c"; weight: "c k"; bias: "c" or None.
    Returns (y_t "b c", new_state "b c (k-1)"). check=False skips the argument checks (for a
    mixer's decoding step, which built them itself).
    """
    if check:
        check_tensor("x_t", x_t, 2, "(b, c)")
        b, _, c, k = _check_args(x_t[:, None], weight, bias, activation)
        _check_state("state", state, b, c, k)
    window = torch.cat([state.to(x_t.dtype), x_t[:, :, None]], dim=2)
    y = (window * weight.to(x_t.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x_t.dtype)
    return _act(y, activation), window[:, :, 1:]
