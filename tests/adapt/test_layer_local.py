"""adapt.layer_local: each student block against its own teacher block, on the teacher's inputs."""
import pytest
import torch

from transmamba.adapt.layer_local import LayerLocalStep, check_cached
from transmamba.models.lm import LM, LMConfig


def _lm(P):
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=30, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32, d_state=8,
                       chunk_size=4, arch="transmamba", schedule={"name": "fixed", "P": P})).double()


def _batch(teacher, L=12):
    x = torch.randint(0, 30, (2, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, hidden = teacher.trunk(x, transpoints=[L] * 3, return_hidden=True)  # the attention teacher
    return (x, x, None, None, *hidden[1:])


def test_student_equal_to_teacher_before_its_transpoints_has_zero_loss():
    teacher = _lm(12)
    batch = _batch(teacher)
    loss, parts = LayerLocalStep(teacher, [0, 1, 2], torch.arange(16), 12)(batch, 0)
    assert float(loss) < 1e-20 and float(parts["loss_local"]) == float(loss)


def test_ssm_tokens_are_trained_and_blocks_are_independent():
    student = _lm(5)  # tokens 5.. of every layer run the SSM path
    batch = _batch(_lm(12))
    step = LayerLocalStep(student, [0, 1, 2], torch.arange(16), 12)
    loss, _ = step(batch, 0)
    assert float(loss) > 1e-6
    loss.backward()
    assert student.embed.weight.grad is None  # inputs are the teacher's: no gradient below a block
    assert all(b.mixer.A_log.grad is not None and b.mixer.A_log.grad.abs().sum() > 0 for b in student.blocks)
    # block 2's loss does not depend on block 0 (its input is the cached teacher stream)
    student.zero_grad()
    hidden = list(batch[4:])
    out = student.blocks[2](hidden[1], 5)
    torch.autograd.grad(out.sum(), [student.blocks[2].mixer.A_log])
    assert student.blocks[0].mixer.A_log.grad is None


def test_mixer_only_freezes_mlps_and_embeddings():
    student = _lm(5)
    frozen = {id(p) for p in LayerLocalStep(student, [0, 1, 2], torch.arange(16), 12, train="mixer").frozen()}
    assert id(student.embed.weight) in frozen and id(student.norm_f.weight) in frozen
    assert all(id(p) in frozen for b in student.blocks for p in b.mlp.parameters())
    assert not any(id(p) in frozen for b in student.blocks for p in b.mixer.parameters())
    block = {id(p) for p in LayerLocalStep(student, [0, 1, 2], torch.arange(16), 12).frozen()}
    assert not any(id(p) in block for b in student.blocks for p in b.mlp.parameters())
    with pytest.raises(ValueError, match="local_train must be one of"):
        LayerLocalStep(student, [0, 1, 2], torch.arange(16), 12, train="all")


def test_uncached_block_inputs_are_refused_by_name():
    check_cached([0, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"hidden_states \[2\] are not cached"):
        check_cached([0, 2], [1, 3])
