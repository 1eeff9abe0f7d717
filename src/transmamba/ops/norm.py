"""RMSNorm and Mamba-2's gated, grouped RMSNorm.

    rms_norm(x)   = x / sqrt(mean(x^2) + eps) * w                    (mean over the last dim)
    gated (norm_before_gate=False, Mamba-2 / HF MambaRMSNormGated):
                    y = rmsnorm_g(x * silu(z)) * w
    gated (norm_before_gate=True):
                    y = rmsnorm_g(x) * w * silu(z)

rmsnorm_g normalizes each contiguous group of `group_size` channels separately. Half-precision
inputs are normalized in float32 and cast back before the weight is applied (as HF does).
The fast paths use `F.rms_norm`; the `*_ref` twins write the formula out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.validate import check_dim, check_divisible

_LOW = (torch.float16, torch.bfloat16)


def _check_x_w(x, weight) -> int:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (..., d), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    d = x.shape[-1]
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            raise ValueError(f"weight must have shape (d,), got "
                             f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight}")
        check_dim("weight", weight, 0, d, "x.shape[-1]")
    return d


def rms_norm(x, weight=None, eps: float = 1e-5):
    """y = x / sqrt(mean_d(x^2) + eps) * weight;  x "... d", weight "d" or None."""
    _check_x_w(x, weight)
    dtype = x.dtype
    if dtype not in _LOW and weight is not None and weight.dtype == dtype:  # one call, weight fused in
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)
    h = x.float() if dtype in _LOW else x
    y = F.rms_norm(h, (x.shape[-1],), eps=eps).to(dtype)
    return y if weight is None else y * weight.to(dtype)


def rms_norm_ref(x, weight=None, eps: float = 1e-5):
    """Reference of `rms_norm`: y = x * rsqrt(mean_d(x^2) + eps) * weight."""
    _check_x_w(x, weight)
    dtype = x.dtype
    h = x.float() if dtype in _LOW else x
    y = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return y if weight is None else y * weight.to(dtype)


def _check_gated(x, z, weight, group_size) -> tuple[int, int]:
    d = _check_x_w(x, weight)
    if not isinstance(z, torch.Tensor) or z.shape != x.shape:
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    group_size = d if group_size is None else int(group_size)
    check_divisible("d (x.shape[-1])", d, "group_size", group_size)
    return d, group_size


def gated_rms_norm(x, z, weight=None, *, group_size: int | None = None, eps: float = 1e-5,
                   norm_before_gate: bool = False):
    """Gated RMSNorm over groups of `group_size` channels (None: one group).

    norm_before_gate=False: y = rmsnorm_g(x * silu(z)) * w;  True: y = rmsnorm_g(x) * w * silu(z).
    x, z: "... d"; weight: "d" or None; d divisible by group_size. Returns "... d".
    """
    d, gs = _check_gated(x, z, weight, group_size)
    dtype = x.dtype
    h = x.float() if dtype in _LOW else x
    gate = F.silu(z.float() if dtype in _LOW else z.to(h.dtype))
    if not norm_before_gate:
        h = h * gate
        if gs == d and weight is not None and dtype not in _LOW:  # one group: weight fused in
            return F.rms_norm(h, (d,), weight.to(dtype), eps=eps)
    y = F.rms_norm(h.unflatten(-1, (d // gs, gs)), (gs,), eps=eps).flatten(-2)
    if norm_before_gate:
        y = y * gate
    y = y.to(dtype)
    return y if weight is None else y * weight.to(dtype)


def gated_rms_norm_ref(x, z, weight=None, *, group_size: int | None = None, eps: float = 1e-5,
                       norm_before_gate: bool = False):
    """Reference of `gated_rms_norm` written with explicit group reshapes and rsqrt."""
    d, gs = _check_gated(x, z, weight, group_size)
    dtype = x.dtype
    h = x.float() if dtype in _LOW else x
    gate = z.to(h.dtype) * torch.sigmoid(z.to(h.dtype))
    if not norm_before_gate:
        h = h * gate
    hg = h.reshape(*h.shape[:-1], d // gs, gs)
    y = (hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)).reshape(h.shape)
    if norm_before_gate:
        y = y * gate
    y = y.to(dtype)
    return y if weight is None else y * weight.to(dtype)
