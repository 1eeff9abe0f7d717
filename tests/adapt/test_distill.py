"""transmamba.adapt.distill: adaptive layer weights, logit KL, feature calibration, directional loss."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.adapt import distill as D


# ---------------------------------------------------------------------------------------------
# distillation


def test_adaptive_weights_hand_examples():
    cos = torch.tensor([0.5, 1.0])
    torch.testing.assert_close(D.adaptive_weights(cos), torch.tensor([3.0, 1.5]))
    assert float(D.adaptive_layer_loss(cos)) == pytest.approx(3.0 * 0.5 + 1.5 * 0.0)
    cos = torch.tensor([-0.2, 0.8])  # clamped to [0.05, 0.8]: sum 0.85
    torch.testing.assert_close(D.adaptive_weights(cos, eps=0.05), torch.tensor([17.0, 1.0625]))
    assert float(D.adaptive_layer_loss(cos, eps=0.05)) == pytest.approx(17 * 1.2 + 1.0625 * 0.2)
    assert float(D.adaptive_layer_loss(cos, adaptive=False)) == pytest.approx(1.2 + 0.2)
    assert float(D.fixed_depth_loss(torch.tensor([0.5, 0.5, 1.0]))) == pytest.approx(
        (1 / 3) * 0.5 + (2 / 3) * 0.5)


def test_adaptive_weights_are_detached():
    cos = torch.tensor([0.4, 0.6, 0.9], requires_grad=True)
    D.adaptive_layer_loss(cos).backward()
    torch.testing.assert_close(cos.grad, -D.adaptive_weights(cos.detach()))


def test_kl_logit_loss():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    T = 2.0
    ps, pt = F.softmax(s / T, -1), F.softmax(t / T, -1)
    manual = T * T * (pt * (pt.log() - ps.log())).sum(-1).mean()
    torch.testing.assert_close(D.kl_logit_loss(s, t, T), manual)
    assert float(D.kl_logit_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        D.kl_logit_loss(s, t[:, :5])


def test_feature_calibration_shapes_and_identity_at_init():
    torch.manual_seed(0)
    calib = D.FeatureCalibration(5, 8, hidden=7)
    s = torch.randn(2, 3, 5)
    out = calib(s)
    assert out.shape == (2, 3, 8)
    torch.testing.assert_close(out, D.token_normalize(F.pad(s, (0, 3))))
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 3), atol=1e-6, rtol=0)
    idx = torch.tensor([6, 0, 2, 3, 7])
    out = D.FeatureCalibration(5, 8, index=idx)(s)
    torch.testing.assert_close(out[..., idx], D.token_normalize(D.pad_to(s, 8, idx))[..., idx])
    assert torch.equal(D.pad_to(s, 8, idx)[..., [1, 4, 5]], torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="d_student"):
        D.FeatureCalibration(9, 8)
    with pytest.raises(ValueError, match="width"):
        calib(torch.randn(2, 3, 4))


def test_directional_loss_is_zero_for_a_perfect_student():
    """Direction k's output equal to the teacher's tokens in order k gives cos 1 and loss 0; the
    same features compared without the permutation do not."""
    torch.manual_seed(0)
    perms = torch.stack([torch.arange(6), torch.arange(6).flip(0), torch.randperm(6)])
    teacher = [torch.randn(2, 6, 4) for _ in range(2)]
    feats = [[t.index_select(1, p) for p in perms] for t in teacher]
    loss_fn = D.DirectionalDistillLoss(2, 2, 4, 4)
    loss, cos = loss_fn(feats, teacher, perms)
    torch.testing.assert_close(cos, torch.ones(2, 3))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    _, cos_wrong = loss_fn(feats, teacher, torch.stack([torch.arange(6)] * 3))
    assert (cos_wrong[:, 1:] < 0.99).all()


def test_layer_alignment_and_released_form():
    assert [D.aligned_teacher_layer(i, 4, 8) for i in range(4)] == [1, 3, 5, 7]
    assert [D.aligned_teacher_layer(i, 3, 3) for i in range(3)] == [0, 1, 2]
    torch.manual_seed(1)
    perms = torch.stack([torch.arange(5)])
    teacher = [torch.randn(1, 5, 3) for _ in range(3)]
    feats = [[teacher[-1]], [teacher[-1]]]  # both student layers equal the teacher's final layer
    loss, cos = D.DirectionalDistillLoss(2, 3, 3, 3, form="released")(feats, teacher, perms)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    paper, cos_p = D.DirectionalDistillLoss(2, 3, 3, 3, form="paper")(feats, teacher, perms)
    assert paper.item() > 0.1  # the paper form compares layer 0 with teacher layer 0 (a(0) = 0)
    with pytest.raises(ValueError, match="form"):
        D.DirectionalDistillLoss(2, 3, 3, 3, form="other")


def test_token_cosine_matches_cosine_similarity_values_and_grads():
    from transmamba.adapt.distill import token_cosine, token_cosine_ref

    g = torch.Generator().manual_seed(0)
    for shape in [(3, 7, 5), (2, 1), (4, 9, 2, 6)]:
        s = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        t = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        with torch.no_grad():
            s[0].zero_()  # a zero vector: both clamp its norm at eps
        a, b = token_cosine(s, t), token_cosine_ref(s, t)
        torch.testing.assert_close(a, b)
        for ga, gb in zip(torch.autograd.grad(a, (s, t)), torch.autograd.grad(b, (s, t))):
            torch.testing.assert_close(ga, gb)


# ---------------------------------------------------------------------------------------------
# teacher targets


@pytest.mark.parametrize("arch,video", [("vim", False), ("videomamba", True)])
def test_teacher_targets_are_the_teachers_tokens_in_the_students_layout(arch, video):
    from transmamba.models.vision import build_student
    from transmamba.models.vit import ViT, ViTConfig

    torch.manual_seed(0)
    teacher = ViT(ViTConfig(img_size=8, patch_size=2, d_model=8, depth=2, num_heads=2, d_ff=8, num_classes=3)).eval()
    student = build_student(dict(arch=arch, img_size=8, patch_size=2, d_model=8, depth=2, num_classes=3, frames=2))
    x = torch.randn(3, 2, 1, 8, 8) if video else torch.randn(3, 1, 8, 8)
    for window in (0, 2):
        logits, toks = D.teacher_targets(teacher, student, x, window)
        want_logits, hidden, _ = teacher(x, return_hidden=True, window=window)
        torch.testing.assert_close(logits, want_logits)
        assert len(toks) == len(hidden) == 2
        for got, h in zip(toks, hidden):
            torch.testing.assert_close(got, student.align_teacher_tokens(h, teacher.n_prefix))
            assert not got.requires_grad
    # the window reaches the teacher: the windowed tokens differ from the full teacher's
    assert not torch.allclose(D.teacher_targets(teacher, student, x, 2)[1][-1],
                              D.teacher_targets(teacher, student, x, 0)[1][-1])
