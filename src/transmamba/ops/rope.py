"""Rotary position embedding in the Llama / Hugging Face "rotate_half" convention.

For head dim `dim` (even) and j in [0, dim/2):  inv_freq_j = theta^(-2j/dim),  angle = pos * inv_freq_j.
cos, sin repeat the dim/2 angles twice ("[f, f]"), and

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]

(x1, x2 the first and second halves of the head dim), so Llama Q/K weights work unchanged.
"""

from __future__ import annotations

import torch

from transmamba.ops.validate import check_dim, check_tensor


def rope_cos_sin(positions, dim: int, theta: float = 10000.0, *, dtype=None, inv_freq=None,
                 scale: float = 1.0):
    """cos, sin "... l dim" for integer or float `positions` "... l" (e.g. "l" or "b l").

    cos = scale * cos([pos * inv_freq, pos * inv_freq]),  inv_freq_j = theta^(-2j/dim) unless given
    (a sequence of dim/2 frequencies, e.g. a scaled RoPE's from transformers' ROPE_INIT_FUNCTIONS;
    `scale` is then its attention factor, applied to cos and sin as HF does).
    Angles are computed in `dtype` (default float32; at least float32), as HF Llama does, so
    float32 results match a Llama checkpoint's rotary tables.
    """
    if not isinstance(positions, torch.Tensor) or positions.dim() < 1:
        raise ValueError(f"positions must be a tensor of shape (..., l), got "
                         f"{tuple(positions.shape) if isinstance(positions, torch.Tensor) else positions!r}")
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got dim={dim}")
    dtype = dtype or torch.float32
    cdt = torch.promote_types(dtype, torch.float32)
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64,
                                                  device=positions.device).to(cdt) / dim))
    else:
        inv_freq = torch.as_tensor(inv_freq, dtype=torch.float32, device=positions.device).to(cdt)
        if inv_freq.shape != (dim // 2,):
            raise ValueError(f"inv_freq must have dim/2 = {dim // 2} entries, got {tuple(inv_freq.shape)}")
    ang = positions.to(cdt)[..., None] * inv_freq
    emb = torch.cat([ang, ang], dim=-1)
    if scale != 1.0:
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """rope(x) = x * cos + rotate_half(x) * sin, broadcast over heads.

    x: "b l heads dim"; cos, sin: "l dim" or "b l dim" (from `rope_cos_sin`). Returns "b l heads dim".
    """
    check_tensor("x", x, 4, "(b, l, heads, dim)")
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise ValueError(f"{name} must have shape (l, dim) or (b, l, dim), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}")
        check_dim(name, t, -1, x.shape[-1], "x head dim")
        check_dim(name, t, -2, x.shape[1], "x length")
    cos = cos.to(x.dtype).unsqueeze(-2)
    sin = sin.to(x.dtype).unsqueeze(-2)
    return x * cos + rotate_half(x) * sin
