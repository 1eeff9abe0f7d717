"""transmamba.adapt.layered_init: the first n teacher layers copied into the student, and the mixer
options (`transfer_vit_to_student(..., mixer_init=...)`): the "mean" init makes each copied mixer a
(decaying) mean of the mapped V with the gate open."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.adapt.layered_init import (MIXER_INITS, SILU_ONE, mean_mixer_ref, mean_scan_constants,
                                           transfer_vit_to_student)
from transmamba.adapt.subclone import qk_dims_for_state
from transmamba.config import load_config
from transmamba.models.vit import ViT, ViTConfig
from transmamba.models.vision import build_student, load_student, save_student
from transmamba.recipes.vision import DISTILL_DEFAULTS

SETTINGS = dict(max_examples=10, deadline=None)
ARCHS = ["vim", "vmamba", "plainmamba", "videomamba"]


def _teacher(seed=0, depth=2):
    torch.manual_seed(seed)
    return ViT(ViTConfig(img_size=8, patch_size=2, d_model=16, depth=depth, num_heads=4, d_ff=32,
                         num_classes=5)).double()


def _student(arch, bias=True, expand=2.0, d_model=12, d_state=4, seed=1):
    torch.manual_seed(seed)
    kw = dict(frames=2, tubelet=1) if arch == "videomamba" else {}
    return build_student(dict(arch=arch, img_size=8, patch_size=2, d_model=d_model, depth=2,
                              d_state=d_state, expand=expand, num_classes=5, bias=bias, **kw)).double()


def _n_v(mixer, d_head=4, heads=4):
    """V channels the layered init fills: whole teacher heads, one freed if none is spare."""
    n = min(heads, mixer.d_inner // d_head)
    return (n - 1 if n * d_head >= mixer.d_inner else n) * d_head


def _init(arch, mixer_init="mean", a0=1.0, lin_scale=0.0, **kw):
    t, s = _teacher(), _student(arch, **kw)
    rep = transfer_vit_to_student(t, s, 2, calib=torch.randn(6, 1, 8, 8, dtype=torch.float64),
                                  mixer_init=mixer_init, mean_decay=a0, lin_scale=lin_scale)
    return t, s, rep


@pytest.mark.parametrize("arch", ARCHS)
@settings(**SETTINGS)
@given(a0=st.sampled_from([0.0, 0.5, 1.0]), b=st.integers(1, 3), seed=st.integers(0, 10 ** 6))
def test_mean_init_mixer_equals_reference_decaying_mean(arch, a0, b, seed):
    """Values and gradients of the copied mixer == the explicit kernel W_k of the equations."""
    _, s, _ = _init(arch, a0=a0)
    g = torch.Generator().manual_seed(seed)
    for blk in s.blocks:
        m = blk.mixer
        v_ch = torch.arange(_n_v(m))
        u = torch.randn(b, m.length, m.d_model, dtype=torch.float64, generator=g, requires_grad=True)
        out, ref = m(u), mean_mixer_ref(m, u, v_ch)
        torch.testing.assert_close(out, ref)
        w = torch.randn(out.shape, dtype=torch.float64, generator=g)
        g1, = torch.autograd.grad((out * w).sum(), u)
        g2, = torch.autograd.grad((ref * w).sum(), u)
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_mean_when_no_decay(arch):
    """a0 = 0: out = out_proj(mean over tokens of x), x = silu(V + b_V) -- written out directly,
    independent of the scan and of `mean_mixer_ref` (the reverse-paired orders cancel exactly)."""
    _, s, _ = _init(arch, a0=0.0)
    m = s.blocks[0].mixer
    v = _n_v(m)
    u = torch.randn(2, m.length, m.d_model, dtype=torch.float64)
    x = F.silu(u @ m.in_proj.weight[:v].t() + m.in_proj.bias[:v])
    want = x.mean(1, keepdim=True).expand_as(x) @ m.out_proj.weight[:, :v].t() + m.out_proj.bias
    torch.testing.assert_close(m(u), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ["vim", "vmamba", "plainmamba"])
def test_gate_open_constant_channel_and_constants(arch):
    _, s, rep = _init(arch)
    m = s.blocks[0].mixer
    v, r, n = _n_v(m), m.dt_rank, m.d_state
    u = torch.randn(3, m.length, m.d_model, dtype=torch.float64)
    z = m.in_proj(u)[..., m.d_inner:]
    torch.testing.assert_close(F.silu(z), torch.ones_like(z))
    assert abs(F.silu(torch.tensor(SILU_ONE, dtype=torch.float64)).item() - 1) < 1e-12
    delta, D = mean_scan_constants(m)
    assert delta == pytest.approx(2 / m.length) and D == pytest.approx(-1 / m.length)  # merge mean
    torch.testing.assert_close(F.softplus(m.dt_proj_bias), torch.full_like(m.dt_proj_bias, delta))
    assert (m.dt_proj_weight == 0).all() and (m.D == D).all()
    # B_0 = C_0 read only the constant channel v; no other state dim reads anything ("mean")
    e = torch.zeros(m.d_inner, dtype=torch.float64)
    e[v] = 1
    for k in range(m.n_orders):
        torch.testing.assert_close(m.x_proj_weight[k, r], e)
        torch.testing.assert_close(m.x_proj_weight[k, r + n], e)
        assert (m.x_proj_weight[k, r + 1:r + n] == 0).all() and (m.x_proj_weight[k, r + n + 1:] == 0).all()
    assert (m.out_proj.weight[:, v:] == 0).all()  # the constant channel is silent
    assert any("gate open" in c for c in rep["copied"])
    # untouched layers keep their own init
    s2 = _student(arch)
    transfer_vit_to_student(_teacher(), s2, 1, calib=torch.randn(6, 1, 8, 8, dtype=torch.float64),
                            mixer_init="mean")
    torch.testing.assert_close(s2.blocks[1].mixer.D, torch.ones_like(s2.blocks[1].mixer.D))


@pytest.mark.parametrize("arch", ["vim", "vmamba", "plainmamba"])
def test_mean_qk_b_c_equal_teacher_k_q_at_exact_width(arch):
    """Exact width (d_model 16 = teacher, d_inner 20: all 16 V dims kept, 4 spare): state dims 1..n-1
    take n-1 teacher Q/K dims (B W_x = W_K, C W_x = W_Q); state dim 0 reads the constant channel."""
    t = _teacher()
    calib = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    s = _student(arch, d_model=16, expand=1.25)
    transfer_vit_to_student(t, s, 2, calib=calib, mixer_init="mean_qk")
    stats = t.calibration_stats(calib)
    m, a = s.blocks[0].mixer, t.blocks[0].attn
    v, r, n = _n_v(m), m.dt_rank, m.d_state
    head_order = torch.argsort(-stats["heads"][0], stable=True)
    x_w = m.in_proj.weight[:v]
    for k in range(m.n_orders):
        qk = qk_dims_for_state(stats["qk"][0], head_order, n - 1, start=k)
        torch.testing.assert_close(m.x_proj_weight[k, r + 1:r + n, :v] @ x_w, a.k_proj.weight[qk])
        torch.testing.assert_close(m.x_proj_weight[k, r + n + 1:, :v] @ x_w, a.q_proj.weight[qk])
        assert m.x_proj_weight[k, r, v] == 1 and m.x_proj_weight[k, r + n, v] == 1
        assert (m.x_proj_weight[k, r, :v] == 0).all() and (m.x_proj_weight[k, r + n, :v] == 0).all()


def test_no_spare_channel_frees_a_head():
    """d_inner == teacher width: the least important V head is dropped; the mixer is still the mean."""
    _, s, rep = _init("vim", a0=0.0, d_model=16, expand=1.0)
    m = s.blocks[0].mixer
    assert _n_v(m) == 12 and any("12/16 channels" in c for c in rep["copied"])
    u = torch.randn(2, m.length, m.d_model, dtype=torch.float64)
    torch.testing.assert_close(m(u), mean_mixer_ref(m, u, torch.arange(12)))


def test_no_bias_student_keeps_gate_at_init():
    _, s, rep = _init("vim", bias=False)
    assert any("gate at init" in c for c in rep["copied"])
    m = s.blocks[0].mixer
    assert m.in_proj.bias is None and (m.in_proj.weight[m.d_inner:] != 0).any()


def test_mapped_is_the_default_and_unchanged():
    t = _teacher()
    calib = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    s1, s2 = _student("vmamba"), _student("vmamba")
    transfer_vit_to_student(t, s1, 2, calib=calib)
    transfer_vit_to_student(t, s2, 2, calib=calib, mixer_init="mapped")
    for (k, a), b in zip(s1.state_dict().items(), s2.state_dict().values()):
        assert torch.equal(a, b), k
    assert (s1.blocks[0].mixer.D == 1).all()


def test_round_trip_through_save_and_config(tmp_path):
    _, s, _ = _init("plainmamba")
    save_student(s, tmp_path)
    s2 = load_student(tmp_path).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(s2(x), s(x))
    cfg = load_config(None, ["--init.mixer", "mean_qk", "--init.mean_decay", "0"], defaults=DISTILL_DEFAULTS)
    assert cfg["init"]["mixer"] == "mean_qk" and float(cfg["init"]["mean_decay"]) == 0.0
    assert DISTILL_DEFAULTS["init"]["mixer"] in MIXER_INITS


@pytest.mark.parametrize("kw, match", [(dict(mixer_init="meen"), "mixer_init"),
                                       (dict(mixer_init="MEAN"), "mixer_init"),
                                       (dict(mixer_init="mean", mean_decay=-1.0), "mean_decay"),
                                       (dict(mixer_init="mean", mean_decay=math.inf), "mean_decay")])
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        transfer_vit_to_student(_teacher(), _student("vim"), 1, **kw)


@pytest.mark.parametrize("arch", ["vim", "vmamba", "plainmamba"])
def test_lin_scale_straightens_the_silu(arch):
    """lin_scale s: out = 2 s O mean(silu(V / s)) + b_O exactly (a0 = 0), -> O mean(V) + b_O as s grows."""
    outs = {}
    for s_ in (0.0, 4.0, 1000.0):
        _, s, _ = _init(arch, a0=0.0, lin_scale=s_)
        m = s.blocks[0].mixer
        v = _n_v(m)
        torch.manual_seed(3)
        u = torch.randn(2, m.length, m.d_model, dtype=torch.float64)
        V = u @ m.in_proj.weight[:v].t() + m.in_proj.bias[:v]
        W = m.out_proj.weight[:, :v]
        if s_:
            want = (2 * s_) * F.silu(V / s_).mean(1, keepdim=True) @ (W / (2 * s_)).t() + m.out_proj.bias
            torch.testing.assert_close(m(u), want.expand_as(m(u)), rtol=1e-9, atol=1e-9)
        outs[s_] = (m(u), V.mean(1, keepdim=True) @ (W / (2 * s_) if s_ else W).t() + m.out_proj.bias)
    lin_err = lambda s_: (outs[s_][0] - outs[s_][1]).abs().max().item()
    assert lin_err(1000.0) < 1e-2 * max(1.0, outs[1000.0][1].abs().max().item())
    assert lin_err(1000.0) < lin_err(4.0) < lin_err(0.0)


def test_bad_lin_scale_raises():
    with pytest.raises(ValueError, match="lin_scale"):
        transfer_vit_to_student(_teacher(), _student("vim"), 1, mixer_init="mean", lin_scale=-2.0)


# ------------------------------------------------------------------------ which layers are copied
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_layered_init_copies_exactly_the_first_n_layers(n):
    t = _teacher(depth=3)
    s = build_student(dict(arch="vim", img_size=8, patch_size=2, d_model=12, depth=3, d_state=4,
                           num_classes=5)).double()
    before = copy.deepcopy(s.state_dict())
    rep = transfer_vit_to_student(t, s, n, calib=torch.randn(4, 1, 8, 8, dtype=torch.float64))
    after = s.state_dict()
    for i in range(3):
        keys = [k for k in after if k.startswith(f"blocks.{i}.")]
        changed = [k for k in keys if not torch.equal(before[k], after[k])]
        if i < n:
            expected = {f"blocks.{i}.{k}" for k in ("norm1.weight", "mixer.in_proj.weight",
                                                    "mixer.out_proj.weight", "mixer.x_proj_weight")}
            assert expected <= set(changed)
        else:
            assert changed == [], changed
    for k in ("patch_embed.weight", "cls_token", "pos_embed", "head.weight", "norm_f.weight"):
        assert not torch.equal(before[k], after[k]), k
    # ViM's class token sits in the middle; its position embedding is the teacher's class slot
    idx = rep["resid_idx"]
    torch.testing.assert_close(s.pos_embed[0, s.cls_pos], t.pos_embed[0, 0, idx])
    torch.testing.assert_close(s.pos_embed[0, 0], t.pos_embed[0, 1, idx])


def test_layered_init_rejects_bad_n():
    t = _teacher(depth=2)
    s = build_student(dict(arch="vim", img_size=8, patch_size=2, d_model=8, depth=4, num_classes=5))
    with pytest.raises(ValueError, match="n_layers"):
        transfer_vit_to_student(t.float(), s, 3)


def test_videomamba_inflated_tubelets_embed_static_clips_like_frames():
    t = _teacher()
    s = build_student(dict(arch="videomamba", img_size=8, patch_size=2, d_model=16, depth=2, d_state=4,
                           frames=4, tubelet=2, num_classes=5)).double()
    transfer_vit_to_student(t, s, 1)
    frame = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    clip = frame[:, None].expand(-1, 4, -1, -1, -1)
    tub = s.patch_embed(clip.transpose(1, 2))[:, :, 0]  # first tubelet "b d h w"
    torch.testing.assert_close(tub, t.patch_embed(frame))
