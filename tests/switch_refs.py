"""Slow references of one Switch mixer written from its weights with the ops' sequential references
(float64-friendly), shared by the Switch option tests and experiments/teacher_families/teacher_families.py:
`qkv_ref` (the projections, conv and q/k norms), `attention_ref` (P >= L) and `ssm_ref` (P = 0:
a pure Mamba-2 layer with C = normed q, B = normed k, x = v, the z gate and D)."""

import math

import torch
import torch.nn.functional as F

from transmamba.ops.conv1d import causal_conv1d_ref
from transmamba.ops.norm import gated_rms_norm_ref, rms_norm_ref
from transmamba.ops.rope import apply_rope, rope_cos_sin
from transmamba.ops.ssd import ssd_ref


def qkv_ref(m, u):
    """By hand: projections (+ bias), conv, q/k RMSNorm as configured."""
    c = m.cfg
    zqkvdt = u @ m.in_proj.weight.T + (m.in_proj.bias if m.in_proj.bias is not None else 0)
    h, g, n = m.h, m.g, m.n
    z, qkv, dt_raw = zqkvdt.split([h * n, m.d_qkv, h], -1)
    z = z if m.z_bias is None else z + m.z_bias
    qkv = causal_conv1d_ref(qkv, m.conv_weight, m.conv_bias, activation=c.conv_activation)
    q, k, v = qkv.split([h * n, g * n, g * n], -1)
    if c.qk_norm == "full":
        q, k = rms_norm_ref(q, m.q_norm_weight, c.norm_eps), rms_norm_ref(k, m.k_norm_weight, c.norm_eps)
    q, k, v = q.unflatten(-1, (h, n)), k.unflatten(-1, (g, n)), v.unflatten(-1, (g, n))
    if c.qk_norm == "head":
        q, k = rms_norm_ref(q, m.q_norm_weight, c.norm_eps), rms_norm_ref(k, m.k_norm_weight, c.norm_eps)
    return q, k, v, F.softplus(dt_raw + m.dt_bias), -torch.exp(m.A_log), z


def attention_ref(m, u):
    c = m.cfg
    q, k, v, *_ = qkv_ref(m, u)
    L = u.shape[1]
    if c.rope:
        cos, sin = rope_cos_sin(torch.arange(L), m.n, c.rope_theta, inv_freq=c.rope_inv_freq, dtype=u.dtype)
        cos, sin = cos * c.rope_attention_factor, sin * c.rope_attention_factor
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    r = m.h // m.g
    k, v = k.repeat_interleave(r, 2), v.repeat_interleave(r, 2)
    s = torch.einsum("blhn,bshn->bhls", q, k) * (c.attn_scale if c.attn_scale is not None else 1 / math.sqrt(m.n))
    if c.attn_softcap:
        s = c.attn_softcap * torch.tanh(s / c.attn_softcap)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = (j <= i) & ((i - j < c.sliding_window) if c.sliding_window else True)
    s = s.masked_fill(~allowed, float("-inf"))
    y = torch.einsum("bhls,bshp->blhp", s.softmax(-1), v)
    return m.out_proj(y.flatten(-2))


def ssm_ref(m, u):
    """Pure Mamba-2 with C = normed q, B = normed k, x = v (no RoPE, no window, no scale, no cap)."""
    q, k, v, dt, A, z = qkv_ref(m, u)
    r = m.h // m.g
    y = ssd_ref(v.repeat_interleave(r, 2), dt, A, k.repeat_interleave(r, 2), q, D=m.D)
    y = gated_rms_norm_ref(y.flatten(-2), z, m.norm_weight, group_size=m.h * m.p // m.g, eps=m.cfg.norm_eps)
    return m.out_proj(y)
