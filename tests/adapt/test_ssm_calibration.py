"""SSM-path calibration of converted Switch layers: recovers a known decay, leaves attention intact."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.adapt.distill import adaptive_layer_loss
from transmamba.teachers.to_switch import full_plan, init_from_teacher, switch_config_from_teacher
from transmamba.adapt.ssm_calibration import (DEFAULT_DECAYS, calibrate_mixer, calibrate_ssm_paths, decay_scan,
                                              ssm_inputs)
from tiny_fixtures import tiny_llama
from transmamba.teachers.families import inspect_teacher
from transmamba.models.lm import LM
from transmamba.modules.switch import SwitchConfig, SwitchMixer


def _mixer(gate_bias=True, **kw):
    torch.manual_seed(0)
    cfg = SwitchConfig(d_model=24, n_heads=4, n_kv_heads=2, head_dim=8, chunk_size=8, gate_bias=gate_bias, **kw)
    return SwitchMixer(cfg).double()


@pytest.mark.parametrize("rope", [False, True])
def test_recovers_the_decay_of_a_known_scan(rope):
    m = _mixer(rope=rope)
    u = torch.randn(2, 40, 24, dtype=torch.float64)
    a_true = torch.tensor([DEFAULT_DECAYS[i] for i in (0, 3, 5, 6)], dtype=torch.float64)
    with torch.no_grad():
        q, k, v = ssm_inputs(m, u)
        target = decay_scan(m, q, k, v, a_true)
    rep = calibrate_mixer(m, u, target=target)
    torch.testing.assert_close(rep["decay"], a_true)
    assert (rep["cos_after"] > 0.9).all()
    # the gate is open and dt = 1 for any input; A holds the decays
    with torch.no_grad():
        z, _, dt_raw = m.project(torch.randn(3, 24, dtype=torch.float64))
        dt, A = m._dt_A(dt_raw)
    torch.testing.assert_close(F.silu(z), torch.ones_like(z))
    torch.testing.assert_close(dt, torch.ones_like(dt))
    torch.testing.assert_close(-A, a_true)


def test_calibration_moves_the_ssm_path_towards_attention_and_keeps_the_attention_path():
    teacher = tiny_llama(num_hidden_layers=2)
    spec = inspect_teacher(teacher)
    student = LM(switch_config_from_teacher(spec, switch_gate_bias=True)).eval()
    init_from_teacher(student, teacher, full_plan(spec))
    ids = torch.randint(0, 64, (2, 48))
    with torch.no_grad():
        before = student(ids, transpoints=10**6)[0]
    reps = calibrate_ssm_paths(student, ids)
    assert len(reps) == 2
    with torch.no_grad():
        after = student(ids, transpoints=10**6)[0]
    torch.testing.assert_close(after, before)  # the attention path is untouched
    for r in reps:  # the gate at its own init scrambles the scan; calibrated, it follows attention
        assert r["cos_after"].mean() > r["cos_before"].mean()
    assert calibrate_ssm_paths(student, ids, layers=[1])[0]["decay"].shape == (spec["n_heads"],)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="gate_bias"):
        calibrate_mixer(_mixer(gate_bias=False), torch.randn(1, 8, 24, dtype=torch.float64))
    m = _mixer()
    with pytest.raises(ValueError, match="d_model"):
        calibrate_mixer(m, torch.randn(1, 8, 23, dtype=torch.float64))
    with pytest.raises(ValueError, match="decays"):
        calibrate_mixer(m, torch.randn(1, 8, 24, dtype=torch.float64), decays=[0.0, 1.0])
    with pytest.raises(ValueError, match="target"):
        calibrate_mixer(m, torch.randn(1, 8, 24, dtype=torch.float64), target=torch.zeros(1, 8, 4, 7))


def test_gate_bias_is_a_plain_bias_on_z():
    m = _mixer()
    with torch.no_grad():
        m.z_bias.normal_()
    u = torch.randn(2, 5, 24, dtype=torch.float64)
    z = m.project(u)[0]
    torch.testing.assert_close(z, (u @ m.in_proj.weight.T)[..., :32] + m.z_bias)


def test_normalized_adaptive_loss_is_the_weighted_mean():
    cos = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    w = cos.sum() / cos
    torch.testing.assert_close(adaptive_layer_loss(cos, normalize=True), (w * (1 - cos)).sum() / w.sum())
    same = torch.full((30,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(adaptive_layer_loss(same, normalize=True), torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(adaptive_layer_loss(same), torch.tensor(0.3 * 30 * 30, dtype=torch.float64))
