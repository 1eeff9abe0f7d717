"""Vision students and the multi-scan mixer: shapes, backward, exposed directions, fast == reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.ops import scan_orders as so
from transmamba.models.vision import StudentConfig, build_student, load_student, save_student
from transmamba.modules.multiscan import MultiScanMamba


SMALL = dict(img_size=8, patch_size=2, d_model=16, depth=2, d_state=4)
K = {"vim": 2, "vmamba": 4, "plainmamba": 4, "videomamba": 2}


def _input(arch, b=2, frames=2):
    if arch == "videomamba":
        return torch.randn(b, frames, 1, 8, 8)
    return torch.randn(b, 1, 8, 8)


@pytest.mark.parametrize("arch", ["vim", "vmamba", "plainmamba", "videomamba"])
def test_student_forward_backward_and_directions(arch):
    torch.manual_seed(0)
    model = build_student(dict(arch=arch, num_classes=5, frames=2, **SMALL))
    x = _input(arch)
    logits, feats = model(x, return_directions=True)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model(x), logits)
    l = {"vim": 17, "vmamba": 16, "plainmamba": 16, "videomamba": 33}[arch]
    assert model.n_tokens == l
    assert len(feats) == 2 and all(len(f) == K[arch] for f in feats)
    assert all(f.shape == (2, l, 16) for fs in feats for f in fs)
    loss = logits.logsumexp(-1).sum() + sum(f.square().mean() for fs in feats for f in fs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    mixer = model.blocks[0].mixer
    assert mixer.x_proj_weight.grad.abs().sum() > 0 and mixer.A_log.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["vim", "plainmamba"])
def test_direction_features_are_residual_plus_branch(arch):
    """f_{i,k} = h_{i-1}[:, perm_k] + dir_{i,k}, and mean_k dir_k[inv_k] is the mixer output."""
    torch.manual_seed(1)
    model = build_student(dict(arch=arch, **SMALL)).double()
    x = _input(arch).double()
    h = model.embed(x)
    blk = model.blocks[0]
    out, dirs = blk.mixer(blk.norm1(h), return_directions=True)
    _, feats = blk(h, return_directions=True)
    for k, (f, d) in enumerate(zip(feats, dirs)):
        torch.testing.assert_close(f, h.index_select(1, blk.mixer.perms[k]) + d)
    merged = torch.stack([d.index_select(1, blk.mixer.invs[k]) for k, d in enumerate(dirs)]).mean(0)
    torch.testing.assert_close(merged, out)


def test_direction_identity_for_sum_merge():
    torch.manual_seed(2)
    orders = so.vmamba_orders(3, 3)
    m = MultiScanMamba(8, orders, d_state=4, merge="sum", bias=True).double()
    u = torch.randn(2, 9, 8, dtype=torch.float64)
    out, dirs = m(u, return_directions=True)
    summed = sum(d.index_select(1, m.invs[k]) for k, d in enumerate(dirs))
    torch.testing.assert_close(summed - (len(orders) - 1) * m.out_proj.bias, out)


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(["vim", "vmamba", "plainmamba", "vmamba2d"]), h=st.integers(1, 3),
       w=st.integers(2, 3), d_model=st.integers(2, 6), d_state=st.integers(1, 4),
       merge=st.sampled_from(["mean", "sum"]), seed=st.integers(0, 100))
def test_multiscan_matches_reference(family, h, w, d_model, d_state, merge, seed):
    """forward (index_select permutations, ops kernels) == forward_ref (python loops), values and grads."""
    torch.manual_seed(seed)
    kw = {}
    if family == "vim":
        orders = so.vim_orders(h * w + 1)
    elif family == "plainmamba":
        orders, kw = so.plainmamba_orders(h, w), {"direction_embed": True}
    else:
        orders = so.vmamba_orders(h, w)
        if family == "vmamba2d":
            kw = {"conv": "2d", "grid": (h, w), "d_conv": 3}
    m = MultiScanMamba(d_model, orders, d_state=d_state, merge=merge, **kw).double()
    u = torch.randn(2, orders[0].length, d_model, dtype=torch.float64, requires_grad=True)
    out, ref = m(u), m.forward_ref(u)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [u] + list(m.parameters()), g)
    grads_ref = torch.autograd.grad(ref, [u] + list(m.parameters()), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_orders_change_the_output():
    """The scan order matters: the same weights on a different order give a different output."""
    torch.manual_seed(3)
    a = MultiScanMamba(8, [so.raster(3, 3)], d_state=4)
    b = MultiScanMamba(8, [so.column(3, 3)], d_state=4)
    b.load_state_dict(a.state_dict())
    u = torch.randn(1, 9, 8)
    assert not torch.allclose(a(u), b(u))


def test_vim_class_token_in_the_middle_and_teacher_index():
    model = build_student(dict(arch="vim", **SMALL))
    assert model.cls_pos == 8
    idx = model.teacher_index(n_prefix=1)
    assert idx.tolist() == list(range(1, 9)) + [0] + list(range(9, 17))
    feat = torch.randn(2, 17, 5)
    torch.testing.assert_close(model.align_teacher_tokens(feat)[:, 8], feat[:, 0])
    # with DeiT's two prefix tokens the distillation token is skipped
    assert model.teacher_index(n_prefix=2).tolist() == list(range(2, 10)) + [0] + list(range(10, 18))


def test_videomamba_aligns_frame_teacher_tokens():
    model = build_student(dict(arch="videomamba", frames=4, tubelet=2, **SMALL))
    feat = torch.randn(2, 4, 17, 3)  # b t (1 + 16) d
    out = model.align_teacher_tokens(feat)
    assert out.shape == (2, 1 + 2 * 16, 3)
    torch.testing.assert_close(out[:, 0], feat[:, :, 0].mean(1))
    torch.testing.assert_close(out[:, 1 + 16 + 5], feat[:, 2:4, 1 + 5].mean(1))  # tubelet 1, patch 5


def test_bad_inputs_raise():
    model = build_student(dict(arch="vmamba", **SMALL))
    with pytest.raises(ValueError, match="x"):
        model(torch.randn(2, 1, 9, 9))
    with pytest.raises(ValueError, match="arch"):
        StudentConfig(arch="resnet")
    with pytest.raises(ValueError, match="unknown student config"):
        build_student({"arch": "vim", "widht": 3})
    with pytest.raises(ValueError, match="u"):
        model.blocks[0].mixer(torch.randn(2, 15, 16))
    with pytest.raises(ValueError, match="direction_embed"):
        MultiScanMamba(4, so.vim_orders(4), direction_embed=True)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(4)
    model = build_student(dict(arch="plainmamba", **SMALL))
    save_student(model, tmp_path / "s")
    again = load_student(tmp_path / "s")
    x = _input("plainmamba")
    torch.testing.assert_close(again(x), model(x))
