"""transmamba.models.vision: the vision students: shapes, backward, exposed directions, tokens, save/load."""

import pytest
import torch

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
