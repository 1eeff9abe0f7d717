"""Small ops: causal depthwise conv1d, RMSNorm / gated RMSNorm, RoPE (fast == reference, values and grads)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.ops.conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_step
from transmamba.ops.norm import gated_rms_norm, gated_rms_norm_ref, rms_norm, rms_norm_ref
from transmamba.ops.rope import apply_rope, rope_cos_sin

F64 = torch.float64
SETTINGS = settings(max_examples=15, deadline=None)


def _grads(out, inputs, seed=0):
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g, allow_unused=True)


# ------------------------------------------------------------------------------------ conv1d
@SETTINGS
@given(b=st.integers(1, 3), l=st.integers(1, 20), c=st.integers(1, 6), k=st.integers(1, 5),
       use_bias=st.booleans(), act=st.sampled_from([None, "silu"]), use_state=st.booleans(),
       seed=st.integers(0, 10_000))
def test_conv_fast_matches_ref_values_and_grads(b, l, c, k, use_bias, act, use_state, seed):
    torch.manual_seed(seed)
    x = torch.randn(b, l, c, dtype=F64, requires_grad=True)
    w = torch.randn(c, k, dtype=F64, requires_grad=True)
    bias = torch.randn(c, dtype=F64, requires_grad=True) if use_bias else None
    s0 = torch.randn(b, c, k - 1, dtype=F64, requires_grad=True) if use_state else None
    ins = [t for t in (x, w, bias, s0) if t is not None]
    y, s = causal_conv1d(x, w, bias, initial_state=s0, return_final_state=True, activation=act)
    y_r, s_r = causal_conv1d_ref(x, w, bias, initial_state=s0, return_final_state=True,
                                 activation=act)
    torch.testing.assert_close(y, y_r)
    torch.testing.assert_close(s, s_r)
    out, out_r = torch.cat([y.flatten(), s.flatten()]), torch.cat([y_r.flatten(), s_r.flatten()])
    for g, g_r in zip(_grads(out, ins), _grads(out_r, ins)):
        torch.testing.assert_close(g, g_r)


@pytest.mark.parametrize("act", [None, "silu"])
def test_conv_gradcheck(act):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(3, dtype=F64, requires_grad=True)
    s0 = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d(a[0], a[1], a[2], initial_state=a[3], activation=act,
                                 return_final_state=True), (x, w, bias, s0))
    assert torch.autograd.gradcheck(lambda a, b: causal_conv1d(a, b, activation=act), (x, w))


def test_conv_matches_direct_formula():
    torch.manual_seed(0)
    x, w, bias = torch.randn(2, 9, 3, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(3, dtype=F64)
    y = causal_conv1d(x, w, bias)
    xp = torch.cat([torch.zeros(2, 3, 3, dtype=F64), x], 1)
    want = bias + sum(w[:, i] * xp[:, i:i + 9] for i in range(4))
    torch.testing.assert_close(y, want)
    # and it is what torch's padded Conv1d (as used by HF / mamba_ssm) computes
    conv = torch.nn.Conv1d(3, 3, 4, groups=3, padding=3, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(w[:, None]), conv.bias.copy_(bias)
    torch.testing.assert_close(y, conv(x.transpose(1, 2))[..., :9].transpose(1, 2))


@SETTINGS
@given(l=st.integers(1, 16), split=st.integers(0, 16), k=st.integers(1, 5), seed=st.integers(0, 999))
def test_conv_state_continuation_and_steps(l, split, k, seed):
    torch.manual_seed(seed)
    split = min(split, l)
    x, w, bias = torch.randn(2, l, 5, dtype=F64), torch.randn(5, k, dtype=F64), torch.randn(5, dtype=F64)
    full, s_full = causal_conv1d(x, w, bias, activation="silu", return_final_state=True)
    y1, s = causal_conv1d(x[:, :split], w, bias, activation="silu", return_final_state=True)
    y2, s2 = causal_conv1d(x[:, split:], w, bias, activation="silu", initial_state=s,
                           return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full)
    torch.testing.assert_close(s2, s_full)
    state, ys = torch.zeros(2, 5, k - 1, dtype=F64), []
    for t in range(l):
        y_t, state = causal_conv1d_step(state, x[:, t], w, bias, "silu")
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), full)
    torch.testing.assert_close(state, s_full)


def test_conv_bad_input_names_argument():
    x, w = torch.randn(2, 5, 3), torch.randn(3, 4)
    with pytest.raises(ValueError, match="x"):
        causal_conv1d(torch.randn(2, 5), w)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(4, 4))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d(x, w, torch.randn(2))
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(x, w, initial_state=torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="state"):
        causal_conv1d_step(torch.randn(2, 3, 4), x[:, 0], w)
    with pytest.raises(ValueError, match="x_t"):
        causal_conv1d_step(torch.randn(2, 3, 3), x, w)


# -------------------------------------------------------------------------------------- norms
@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=2), groups=st.integers(1, 3),
       gs=st.integers(1, 5), nbg=st.booleans(), seed=st.integers(0, 999))
def test_gated_norm_fast_matches_ref_and_formula(shape, groups, gs, nbg, seed):
    torch.manual_seed(seed)
    d = groups * gs
    x = torch.randn(*shape, d, dtype=F64, requires_grad=True)
    z = torch.randn(*shape, d, dtype=F64, requires_grad=True)
    w = torch.randn(d, dtype=F64, requires_grad=True)
    y = gated_rms_norm(x, z, w, group_size=gs, eps=1e-5, norm_before_gate=nbg)
    y_r = gated_rms_norm_ref(x, z, w, group_size=gs, eps=1e-5, norm_before_gate=nbg)
    # direct per-group formula, written independently of both
    gate = z / (1 + torch.exp(-z))
    h = x if nbg else x * gate
    want = torch.empty_like(h)
    for i in range(groups):
        sl = slice(i * gs, (i + 1) * gs)
        hg = h[..., sl]
        want[..., sl] = hg / torch.sqrt((hg * hg).sum(-1, keepdim=True) / gs + 1e-5)
    want = want * w * (gate if nbg else 1)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(y_r, want)
    for g, g_r in zip(_grads(y, (x, z, w)), _grads(y_r, (x, z, w))):
        torch.testing.assert_close(g, g_r)


def test_norm_gradcheck_and_rms_norm():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    z = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    w = torch.randn(6, dtype=F64, requires_grad=True)
    for nbg in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c: gated_rms_norm(a, b, c, group_size=3, eps=1e-5, norm_before_gate=nbg),
            (x, z, w))
    assert torch.autograd.gradcheck(lambda a, c: rms_norm(a, c, 1e-6), (x, w))
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))
    torch.testing.assert_close(rms_norm(x, w, 1e-6), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w)
    for g, g_r in zip(_grads(rms_norm(x, w), (x, w)), _grads(rms_norm_ref(x, w), (x, w))):
        torch.testing.assert_close(g, g_r)


def test_gated_norm_matches_hf_and_half_precision():
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    torch.manual_seed(0)
    hf = MambaRMSNormGated(12, group_size=4, eps=1e-5)
    with torch.no_grad():
        hf.weight.normal_()
    x, z = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    torch.testing.assert_close(gated_rms_norm(x, z, hf.weight, group_size=4, eps=1e-5), hf(x, z))
    xb, zb, wb = x.bfloat16(), z.bfloat16(), hf.weight.detach().bfloat16()
    yb = gated_rms_norm(xb, zb, wb, group_size=4, eps=1e-5)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), hf(x, z).detach(), atol=0.05, rtol=0.02)


def test_norm_bad_input():
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(5))
    with pytest.raises(ValueError, match="z"):
        gated_rms_norm(x, torch.randn(2, 5), torch.ones(6))
    with pytest.raises(ValueError, match="group_size"):
        gated_rms_norm(x, x, torch.ones(6), group_size=4)


# --------------------------------------------------------------------------------------- rope
def test_rope_matches_hf_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0)
    rot = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(3, 40)[None]
    q, k = torch.randn(1, 37, 4, 16), torch.randn(1, 37, 2, 16)
    cos_hf, sin_hf = rot(q, pos)
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos_hf, sin_hf)
    cos, sin = rope_cos_sin(pos[0], 16, 500000.0)
    torch.testing.assert_close(cos, cos_hf[0])
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf.transpose(1, 2))
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf.transpose(1, 2))


def test_rope_is_relative():
    """<rope(q, m), rope(k, n)> depends only on m - n, and rope preserves norms."""
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8, dtype=F64), torch.randn(1, 1, 1, 8, dtype=F64)

    def rot(t, p):
        c, s = rope_cos_sin(torch.tensor([p]), 8, 100.0, dtype=F64)
        return apply_rope(t, c, s)

    dots = [(rot(q, m) * rot(k, m - 3)).sum() for m in (3, 7, 20)]
    torch.testing.assert_close(dots[0], dots[1])
    torch.testing.assert_close(dots[0], dots[2])
    assert not torch.allclose((rot(q, 7) * rot(k, 3)).sum(), (rot(q, 7) * rot(k, 5)).sum())
    torch.testing.assert_close(rot(q, 11).norm(), q.norm())
    with pytest.raises(ValueError, match="cos"):
        apply_rope(q, torch.ones(2, 8), torch.ones(2, 8))
    with pytest.raises(ValueError, match="dim"):
        rope_cos_sin(torch.arange(3), 7)
