"""transmamba.adapt.subclone: importance ranking, cutting linears/norms, attention -> SSM maps, width subcloning."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.adapt.layered_init import transfer_vit_to_student, weight_norm_stats
from transmamba.adapt.subclone import (activation_importance, attention_to_ssm, cut_linear,
                                       norm_cut_scale, qk_dims_for_state, top_k_indices,
                                       weight_importance)
from transmamba.models.vit import ViT, ViTConfig
from transmamba.models.vision import build_student
from transmamba.modules.norm import RMSNorm


SETTINGS = dict(max_examples=15, deadline=None)


def _teacher(d=16, depth=2, heads=4, ff=32, seed=0):
    torch.manual_seed(seed)
    return ViT(ViTConfig(img_size=8, patch_size=2, d_model=d, depth=depth, num_heads=heads,
                         d_ff=ff, num_classes=5)).double()


# ---------------------------------------------------------------------------------------------
# subcloning


@settings(**SETTINGS)
@given(n=st.integers(1, 20), data=st.data())
def test_top_k_picks_the_most_important(n, data):
    imp = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)))
    k = data.draw(st.integers(0, n))
    idx = top_k_indices(imp, k)
    assert idx.tolist() == sorted(idx.tolist()) and len(set(idx.tolist())) == k
    kept, dropped = imp[idx], imp[[j for j in range(n) if j not in idx.tolist()]]
    if k and dropped.numel():
        assert kept.min() >= dropped.max()


def test_importances():
    a = torch.tensor([[[1.0, -2.0, 0.0]], [[-3.0, 2.0, 1.0]]])
    torch.testing.assert_close(activation_importance(a), torch.tensor([2.0, 2.0, 0.5]))
    w_out = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # writes dims 0, 1 (rows)
    w_in = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # reads dims 0, 1 (columns)
    torch.testing.assert_close(weight_importance([w_out], [w_in]), torch.tensor([6.0, 1.0]))
    with pytest.raises(ValueError, match="k="):
        top_k_indices(torch.ones(3), 4)


def test_norm_cut_scale_hand_example():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    idx = torch.tensor([0, 1])
    assert norm_cut_scale(x, idx, "rms") == pytest.approx(math.sqrt(12.5) / 2.5)
    assert norm_cut_scale(x, idx, "layer") == pytest.approx(0.5 / math.sqrt(3.1875))
    assert norm_cut_scale(None, idx, "rms", d_full=8) == pytest.approx(2.0)


def test_cut_rmsnorm_reproduces_teacher_scale():
    """With all energy on the kept dims, the rescaled cut norm equals the teacher's norm there."""
    torch.manual_seed(0)
    g = torch.randn(6, dtype=torch.float64)
    idx = torch.tensor([1, 3, 4])
    x = torch.zeros(5, 6, dtype=torch.float64)
    x[:, idx] = torch.randn(5, 3, dtype=torch.float64)
    x[:, idx] *= torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    teacher = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * g)[:, idx]
    s = norm_cut_scale(x, idx, "rms")
    student = RMSNorm(3, eps=0.0).double()
    student.weight.data = g[idx] * s
    # per token the ratio rms_S / rms_D is the constant sqrt(6/3), so the mean is exact
    torch.testing.assert_close(student(x[:, idx]), teacher)


@settings(**SETTINGS)
@given(D_t=st.integers(4, 10), frac=st.floats(0.3, 1.0), v_extra=st.integers(0, 4), n=st.integers(1, 4),
       seed=st.integers(0, 99))
def test_attention_to_ssm_reproduces_k_q_through_x(D_t, frac, v_extra, n, seed):
    """W_B W_x = W_K[qk][:, S] and W_C W_x = W_Q[qk][:, S] whenever |v| >= |S|."""
    g = torch.Generator().manual_seed(seed)
    W = [torch.randn(D_t, D_t, generator=g, dtype=torch.float64) for _ in range(4)]
    S = max(1, int(frac * D_t))
    in_idx = torch.randperm(D_t, generator=g)[:S].sort().values
    v_idx = torch.randperm(D_t, generator=g)[:min(D_t, S + v_extra)].sort().values
    qk_idx = torch.randperm(D_t, generator=g)[:min(n, D_t)]
    m = attention_to_ssm(*W, in_idx=in_idx, v_idx=v_idx, qk_idx=qk_idx)
    torch.testing.assert_close(m.B_weight @ m.x_weight, cut_linear(W[1], None, qk_idx, in_idx)[0])
    torch.testing.assert_close(m.C_weight @ m.x_weight, cut_linear(W[0], None, qk_idx, in_idx)[0])
    torch.testing.assert_close(m.out_weight, W[3][in_idx][:, v_idx])


def test_qk_dims_for_state():
    imp = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.7]])
    order = torch.tensor([1, 0])
    assert qk_dims_for_state(imp, order, 2).tolist() == [3, 5]  # head 1: its dims 0 and 2
    assert qk_dims_for_state(imp, order, 2, start=1).tolist() == [1, 2]  # head 0
    assert qk_dims_for_state(imp, order, 4).tolist() == [3, 4, 5, 1]


@pytest.mark.parametrize("arch", ["vim", "vmamba", "plainmamba"])
def test_exact_width_subclone_reproduces_teacher_linear_maps(arch):
    """Student width == teacher width, d_inner == teacher width, d_ff == teacher d_ff: every dim is
    kept, so the copied maps equal the teacher's (B, C through the x projection)."""
    t = _teacher()
    s = build_student(dict(arch=arch, img_size=8, patch_size=2, d_model=16, depth=2, d_state=4,
                           expand=1.0, mlp_ratio=2.0, num_classes=5, bias=True)).double()
    calib = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    rep = transfer_vit_to_student(t, s, 2, calib=calib)
    assert rep["resid_idx"].tolist() == list(range(16))
    torch.testing.assert_close(s.patch_embed.weight, t.patch_embed.weight)
    torch.testing.assert_close(s.head.weight, t.head.weight)
    torch.testing.assert_close(s.norm_f.weight, t.norm.weight)
    stats = t.calibration_stats(calib)
    for i, (tb, sb) in enumerate(zip(t.blocks, s.blocks)):
        a, m = tb.attn, sb.mixer
        x_w = m.in_proj.weight[:16]
        torch.testing.assert_close(x_w, a.v_proj.weight)  # all heads kept, in order
        torch.testing.assert_close(m.in_proj.bias[:16], a.v_proj.bias)
        torch.testing.assert_close(m.out_proj.weight, a.o_proj.weight)
        torch.testing.assert_close(sb.norm1.weight, tb.norm1.weight)
        torch.testing.assert_close(sb.mlp.fc1.weight, tb.mlp.fc1.weight)
        torch.testing.assert_close(sb.mlp.fc2.weight, tb.mlp.fc2.weight)
        r, n = m.dt_rank, m.d_state
        head_order = torch.argsort(-stats["heads"][i], stable=True)
        for k in range(m.n_orders):
            qk = qk_dims_for_state(stats["qk"][i], head_order, n, start=k)
            torch.testing.assert_close(m.x_proj_weight[k, r:r + n] @ x_w, a.k_proj.weight[qk])
            torch.testing.assert_close(m.x_proj_weight[k, r + n:] @ x_w, a.q_proj.weight[qk])


def test_subclone_picks_top_importance_dims():
    t = _teacher()
    s = build_student(dict(arch="plainmamba", img_size=8, patch_size=2, d_model=6, depth=2, d_state=2,
                           num_classes=5, mlp_ratio=1.0)).double()
    stats = weight_norm_stats(t)
    stats["resid"] = (torch.arange(16.0) * 5) % 7  # a scrambled ranking ...
    stats["resid"][[2, 9]] = 10.0  # ... with two clear winners
    rep = transfer_vit_to_student(t, s, 1, stats=stats)
    expect = top_k_indices(stats["resid"], 6)
    assert set(expect.tolist()) >= {2, 9}
    assert torch.equal(rep["resid_idx"], expect)
    torch.testing.assert_close(s.patch_embed.weight, t.patch_embed.weight[expect])
    torch.testing.assert_close(s.pos_embed, t.pos_embed[:, 1:, expect])
    # MLP: student keeps the 6 most important of the teacher's 32 neurons
    neurons = top_k_indices(stats["neurons"][0], 6)
    torch.testing.assert_close(s.blocks[0].mlp.fc1.weight, t.blocks[0].mlp.fc1.weight[neurons][:, expect])
