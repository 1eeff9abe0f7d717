"""transmamba.ops.conv1d: the causal depthwise conv1d, fast == reference (values and grads), state and steps."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _shapes import grads
from transmamba.ops.conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_step

F64 = torch.float64
SETTINGS = settings(max_examples=15, deadline=None)


# ------------------------------------------------------------------------------------ conv1d
@SETTINGS
@given(b=st.integers(1, 3), l=st.integers(1, 20), c=st.integers(1, 6), k=st.integers(1, 5),
       use_bias=st.booleans(), act=st.sampled_from([None, "silu"]), use_state=st.booleans(),
       seed=st.integers(0, 10_000))
def test_conv_fast_matches_ref_values_andgrads(b, l, c, k, use_bias, act, use_state, seed):
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
    for g, g_r in zip(grads(out, ins), grads(out_r, ins)):
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
