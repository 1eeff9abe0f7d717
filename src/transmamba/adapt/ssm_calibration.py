"""Calibrate a converted Switch layer's SSM path against its own attention path, on real text.

Subcloning gives a Switch layer the teacher's Q, K, V, O (= C, B, x, out_proj), so its attention
path is the teacher's. Its SSM path also has parameters no Transformer has: the gate z, dt, A and
the gated RMSNorm's weight. Left at their own init (random gate, dt in [1e-3, 0.1], decays up to
e^-1.6 per token) the SSM path scrambles what the attention weights carry. We set them instead so
that, layer by layer and on the attention path's own inputs u, the SSM output imitates the
attention output y^att (before out_proj):

    gate    W_z = 0, b_z = silu^-1(1)          so silu(z) = 1: the gate starts open
    dt      W_dt = 0, dt_bias = softplus^-1(1)  so dt = 1 and the decay per token is exp(A) = e^-a
    A       per head h:  a_h = argmax_{a in decays} mean_t cos(y^ssm_{t,h}(a), y^att_{t,h}),
            y^ssm_t(a) = sum_{s<=t} e^{-a (t - s)} (C_t . B_s) x_s     (the SSD scan with dt = 1)
    norm    per channel c:  w_c = sum_t yhat_{t,c} y^att_{t,c} / sum_t yhat_{t,c}^2,
            yhat = gated_rmsnorm(y^ssm(a), gate 1, weight 1)    (least squares, the scale of y^att)

The scan cannot copy softmax attention (its kernel C.B is linear and unnormalised), but every
choice above is the best of its family against the attention path, so the switch at P starts from
the closest SSM the weights allow. Needs a student built with `switch_gate_bias=True`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transmamba.modules.switch import SwitchMixer
from transmamba.ops.conv1d import causal_conv1d
from transmamba.ops.norm import gated_rms_norm
from transmamba.ops.ssd import ssd_chunked
from transmamba.ops.validate import check_dim, check_tensor
from transmamba.modules.schedule import ATTENTION_ONLY

DEFAULT_DECAYS = (1e-4, 1 / 1024, 1 / 256, 1 / 64, 1 / 16, 1 / 4, 1.0)
GATE_OPEN = 1.2784645427610738  # silu(GATE_OPEN) = 1
DT_ONE = math.log(math.e - 1)  # softplus(DT_ONE) = 1


def ssm_inputs(mixer: SwitchMixer, u: torch.Tensor):
    """u "b l d" -> q "b l h n", k "b l g n", v "b l g p" after the conv (no RoPE: the SSM's C, B, x)."""
    _, qkv, _ = mixer.project(u)
    qkv = causal_conv1d(qkv, mixer.conv_weight, mixer.conv_bias, activation=mixer.cfg.conv_activation)
    return mixer.split_qkv(qkv)


def _path_output(mixer: SwitchMixer, u: torch.Tensor, transpoint: int) -> torch.Tensor:
    """The mixer's own output before out_proj, "b l h p": the attention path (ATTENTION_ONLY) or
    the SSM path (0), through the module's forward."""
    y = {}
    hook = mixer.out_proj.register_forward_pre_hook(lambda m, args: y.__setitem__("y", args[0]))
    try:
        mixer(u, transpoint=transpoint)
    finally:
        hook.remove()
    return y["y"].unflatten(-1, (mixer.h, mixer.p))


def decay_scan(mixer: SwitchMixer, q, k, v, a: torch.Tensor) -> torch.Tensor:
    """y^ssm with dt = 1 and per-head decay a "h": "b l h p"."""
    b, L = q.shape[:2]
    dt = q.new_ones(b, L, mixer.h)
    return ssd_chunked(mixer.expand_heads(v), dt, -a.to(q.dtype), mixer.expand_heads(k), q, chunk_size=mixer.cfg.chunk_size)


def _head_cos(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean over b, l of cos(y_{b,l,h}, t_{b,l,h}): "b l h p" x2 -> "h"."""
    return F.cosine_similarity(y, t, dim=-1, eps=1e-8).mean((0, 1))


@torch.no_grad()
def calibrate_mixer(mixer: SwitchMixer, u: torch.Tensor, decays=DEFAULT_DECAYS,
                    target: torch.Tensor | None = None) -> dict:
    """Set the mixer's gate, dt, A and norm weight from its inputs u "b l d" (module docstring).

    target "b l h p": what the SSM path should imitate; default: the mixer's own attention path.
    Returns {"decay": a "h", "cos_before": "h" (SSM path as it was, gate included), "cos_after": "h"}.
    """
    if mixer.z_bias is None:
        raise ValueError("calibrate_mixer needs a mixer built with gate_bias=True (LMConfig.switch_gate_bias)")
    check_tensor("u", u, 3, "(b, l, d_model)")
    check_dim("u", u, 2, mixer.cfg.d_model, "d_model")
    if not decays or min(decays) <= 0:
        raise ValueError(f"decays must be a non-empty list of positive rates, got {decays}")
    u = u.to(mixer.in_proj.weight.dtype)
    q, k, v = ssm_inputs(mixer, u)
    y_att = _path_output(mixer, u, ATTENTION_ONLY)
    if target is not None:
        if target.shape != y_att.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, expected {tuple(y_att.shape)}")
        y_att = target.to(y_att.dtype)
    h, p = mixer.h, mixer.p
    cos_before = _head_cos(_path_output(mixer, u, 0), y_att)
    grid = torch.tensor(decays, dtype=q.dtype)
    cos = torch.stack([_head_cos(decay_scan(mixer, q, k, v, a.expand(h)), y_att) for a in grid])  # "decays h"
    a = grid[cos.argmax(0)]
    y = decay_scan(mixer, q, k, v, a)
    yhat = gated_rms_norm(y.flatten(-2), torch.full_like(y.flatten(-2), GATE_OPEN), torch.ones(h * p, dtype=y.dtype),
                          group_size=h * p // mixer.g, eps=mixer.cfg.norm_eps)
    t = y_att.flatten(-2)
    w = (yhat * t).sum((0, 1)) / (yhat * yhat).sum((0, 1)).clamp_min(1e-12)
    mixer.in_proj.weight[:h * p] = 0
    mixer.z_bias.fill_(GATE_OPEN)
    mixer.in_proj.weight[-h:] = 0
    if mixer.in_proj.bias is not None:
        mixer.in_proj.bias[:h * p] = 0
        mixer.in_proj.bias[-h:] = 0
    mixer.dt_bias.fill_(DT_ONE)
    mixer.A_log.copy_(torch.log(a))
    mixer.norm_weight.copy_(w)
    cos_after = _head_cos(_path_output(mixer, u, 0), y_att)
    return {"decay": a, "cos_before": cos_before, "cos_after": cos_after}


@torch.no_grad()
def calibrate_ssm_paths(student, ids: torch.Tensor, decays=DEFAULT_DECAYS, layers=None) -> list[dict]:
    """Calibrate the Switch layers of an LM (`transmamba.models.lm.LM`) on token ids "b l"
    (`layers`: which block indices; None: every Switch layer). Returns one report per layer.

    Each layer's inputs come from running the student with every TransPoint beyond the sequence
    (the attention path, i.e. the subcloned teacher), so every layer imitates its attention path
    on the inputs the attention-path model gives it."""
    inputs, hooks = {}, []
    layers = range(len(student.blocks)) if layers is None else layers
    for i in layers:
        blk = student.blocks[i]
        if isinstance(blk.mixer, SwitchMixer):
            hooks.append(blk.mixer.register_forward_pre_hook(
                lambda m, args, kw, i=i: inputs.__setitem__(i, args[0] if args else kw["u"]), with_kwargs=True))
    try:
        student(ids, transpoints=ATTENTION_ONLY)
    finally:
        for hk in hooks:
            hk.remove()
    return [calibrate_mixer(student.blocks[i].mixer, inputs[i], decays) for i in sorted(inputs)]
