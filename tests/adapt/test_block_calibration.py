"""`adapt.block_calibration`: the closed-form ridge fit, and the out_proj refit of copied blocks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.adapt.block_calibration import calibrate_head_, calibrate_out_proj_, fit_linear
from transmamba.adapt.layered_init import transfer_vit_to_student
from transmamba.models.vit import ViT, ViTConfig
from transmamba.models.vision import build_student

ARCHS = ["vim", "vmamba", "plainmamba", "videomamba"]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(8, 40), d_in=st.integers(1, 6), d_out=st.integers(1, 5),
       ridge=st.sampled_from([0.0, 1e-3, 0.5]), bias=st.booleans(), seed=st.integers(0, 10_000))
def test_fit_linear_is_the_ridge_optimum(n, d_in, d_out, ridge, bias, seed):
    """At the solution the objective's gradient in W (and b) is zero (float64, autograd)."""
    g0 = torch.Generator().manual_seed(seed)
    g = torch.randn(n, d_in, generator=g0, dtype=torch.float64)
    t = torch.randn(n, d_out, generator=g0, dtype=torch.float64) + 3.0
    w, b = fit_linear(g, t, ridge, bias=bias)
    assert (b is None) != bias
    w = w.clone().requires_grad_()
    b = (b if bias else torch.zeros(d_out, dtype=torch.float64)).clone().requires_grad_(bias)
    gm = g - g.mean(0) if bias else g
    lam = ridge * (gm.t() @ gm).diagonal().mean()
    loss = (g @ w.t() + b - t).pow(2).sum() + lam * w.pow(2).sum()
    loss.backward()
    scale = t.pow(2).sum()
    assert w.grad.abs().max() <= 1e-8 * scale
    if bias:
        assert b.grad.abs().max() <= 1e-8 * scale


def test_fit_linear_recovers_an_exact_map_and_matches_lstsq():
    torch.manual_seed(0)
    g = torch.randn(50, 4, dtype=torch.float64)
    w_true, b_true = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    w, b = fit_linear(g, g @ w_true.t() + b_true, ridge=0.0)
    torch.testing.assert_close(w, w_true)
    torch.testing.assert_close(b, b_true)
    t = torch.randn(50, 3, dtype=torch.float64)
    ref = torch.linalg.lstsq(torch.cat([g, torch.ones(50, 1, dtype=g.dtype)], 1), t).solution
    w, b = fit_linear(g, t, ridge=0.0)
    torch.testing.assert_close(torch.cat([w.t(), b[None]]), ref)


@pytest.mark.parametrize("bad, match", [((torch.randn(5, 2), torch.randn(4, 2)), "N, d_in"),
                                        ((torch.full((5, 2), float("nan")), torch.randn(5, 2)), "NaN"),
                                        ((torch.randn(5), torch.randn(5, 1)), "N, d_in")])
def test_fit_linear_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        fit_linear(*bad)


def _pair(arch, bias=True):
    torch.manual_seed(0)
    teacher = ViT(ViTConfig(img_size=8, patch_size=2, d_model=16, depth=3, num_heads=4, d_ff=32,
                            num_classes=5)).double()
    kw = dict(frames=2, tubelet=1) if arch == "videomamba" else {}
    student = build_student(dict(arch=arch, img_size=8, patch_size=2, d_model=12, depth=3, d_state=4,
                                 num_classes=5, bias=bias, **kw)).double()
    shape = (24, 2, 1, 8, 8) if arch == "videomamba" else (24, 1, 8, 8)
    return teacher, student, torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bias", [True, False])
def test_calibration_lowers_each_copied_block_error_and_leaves_the_rest(arch, bias):
    teacher, student, calib = _pair(arch, bias)
    rep = transfer_vit_to_student(teacher, student, 2, calib=calib, mixer_init="mean_qk", mean_decay=0.1)
    untouched = {k: v.clone() for k, v in student.state_dict().items()
                 if not k.startswith(("blocks.0.mixer.out_proj", "blocks.1.mixer.out_proj"))}
    lines = calibrate_out_proj_(teacher, student, 2, calib, rep["resid_idx"], ridge=0.0)
    assert len(lines) == 2
    for line in lines:  # "... (error a -> b)": least squares can only lower the training error
        a, b = (float(v) for v in line.rsplit("(error ", 1)[1].rstrip(")").split(" -> "))
        assert b <= a + 1e-9
    for k, v in student.state_dict().items():
        if k in untouched:
            assert torch.equal(v, untouched[k]), k
    assert "attention" in lines[0] if arch == "vmamba" else "block" in lines[0]


def test_calibrated_block_is_the_least_squares_fit_of_the_teacher_block():
    """Block 0 of a ViM student after calibration, against the fit recomputed here from the
    equations: g = out_proj's input on norm1(embed(x)), target = teacher h_1[idx] - embed(x)."""
    teacher, student, calib = _pair("vim")
    rep = transfer_vit_to_student(teacher, student, 1, calib=calib, mixer_init="mean_qk", mean_decay=0.1)
    idx = rep["resid_idx"]
    calibrate_out_proj_(teacher, student, 1, calib, idx, ridge=1e-3)
    with torch.no_grad():
        u = student.embed(calib)
        _, hidden, _ = teacher(calib, return_hidden=True)
        target = student.align_teacher_tokens(hidden[0][..., idx], teacher.n_prefix) - u
        mixer = student.blocks[0].mixer
        x = student.blocks[0].norm1(u)
        captured = []
        h = mixer.out_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        mixer(x)
        h.remove()
        w, b = fit_linear(captured[0].flatten(0, 1), target.flatten(0, 1), 1e-3)
    torch.testing.assert_close(mixer.out_proj.weight, w)
    torch.testing.assert_close(mixer.out_proj.bias, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_calibration_fits_the_teacher_logits(arch):
    teacher, student, calib = _pair(arch)
    transfer_vit_to_student(teacher, student, 1, calib=calib)
    body = {k: v.clone() for k, v in student.state_dict().items() if not k.startswith("head.")}
    line = calibrate_head_(teacher, student, calib, ridge=0.0)
    a, b = (float(v) for v in line.rsplit("(error ", 1)[1].rstrip(")").split(" -> "))
    assert b <= a + 1e-9 and b < 1.0
    assert all(torch.equal(student.state_dict()[k], v) for k, v in body.items())
    with torch.no_grad():  # the head is now the least-squares readout of the teacher's logits
        h = student.embed(calib)
        for blk in student.blocks:
            h, _ = blk(h)
        w, bias = fit_linear(student.pool(student.norm_f(h)), teacher(calib), 0.0)
    torch.testing.assert_close(student.head.weight, w)
    torch.testing.assert_close(student.head.bias, bias)


def test_head_calibration_needs_matching_classes():
    teacher, student, calib = _pair("vim")
    student.head = torch.nn.Linear(12, 7).double()
    with pytest.raises(ValueError, match="7 classes"):
        calibrate_head_(teacher, student, calib)


@pytest.mark.parametrize("arch", ARCHS)
def test_free_channels_are_the_silent_ones(arch):
    teacher, student, calib = _pair(arch)
    rep = transfer_vit_to_student(teacher, student, 2, calib=calib, mixer_init="mean_qk", mean_decay=0.1)
    for i, free in enumerate(rep["free_channels"]):
        mixer = student.blocks[i].mixer
        assert len(free) and int(free.max()) == mixer.d_inner - 1
        silent = (mixer.out_proj.weight == 0).all(0).nonzero().flatten()
        assert silent.tolist() == [int(free[0]) - 1] + free.tolist()  # the constant channel, then F
        assert (mixer.in_proj.weight[int(free[0]) - 1] == 0).all()  # the constant channel


@pytest.mark.parametrize("arch", ARCHS)
def test_hosted_mlp_neurons_are_the_fit_of_the_teacher_preactivations(arch):
    """Blocks without an MLP: in_proj rows F = 1.702 x the ridge fit of fc1's pre-activations at
    the top-|F| neurons, D[:, F] = 1 / (m K). Blocks with an MLP (VMamba) keep their rows."""
    from transmamba.adapt.block_calibration import GELU_AS_SILU

    teacher, student, calib = _pair(arch)
    rep = transfer_vit_to_student(teacher, student, 1, calib=calib, mixer_init="mean_qk", mean_decay=0.1)
    free, mixer = rep["free_channels"][0], student.blocks[0].mixer
    rows = mixer.in_proj.weight[free].clone()
    lines = calibrate_out_proj_(teacher, student, 1, calib, rep["resid_idx"], 1e-3, rep["free_channels"])
    if student.blocks[0].mlp is not None:
        assert torch.equal(mixer.in_proj.weight[free], rows) and "hosted" not in lines[0]
        return
    assert f"{len(free)} MLP neurons hosted" in lines[0]
    with torch.no_grad():
        stats = []
        teacher(calib, return_hidden=True, stats=stats)
        m0 = stats[0]["norm2_in"]
        pre = teacher.blocks[0].mlp.fc1(teacher.blocks[0].norm2(m0))
        top = torch.topk(torch.nn.functional.gelu(pre).abs().flatten(0, -2).mean(0), len(free)).indices
        pre = pre[..., top]
        if calib.dim() == 5:
            pre = pre.unflatten(0, calib.shape[:2])
        a = student.align_teacher_tokens(pre, teacher.n_prefix).flatten(0, 1)
        u = student.embed(calib)
        w, b = fit_linear(student.blocks[0].norm1(u).flatten(0, 1), a, 1e-3)
    torch.testing.assert_close(mixer.in_proj.weight[free], GELU_AS_SILU * w)
    torch.testing.assert_close(mixer.in_proj.bias[free], GELU_AS_SILU * b)
    m = 1.0 / mixer.n_orders if mixer.merge == "mean" else 1.0  # from the docstring, not merge_weight
    assert torch.allclose(mixer.D[:, free], torch.tensor(1.0 / (m * mixer.n_orders), dtype=mixer.D.dtype))
