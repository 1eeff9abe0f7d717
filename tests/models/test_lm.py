"""The LM: four architectures from one code path, equal parameter counts, decoding == forward."""

import pytest
import torch

from transmamba.models.lm import ARCHS, LM, LMConfig


def tiny(arch, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, d_model=32, n_layers=4, arch=arch, n_heads=2, head_dim=16, d_state=16,
               expand=2, chunk_size=8, hybrid_attn_every=2, schedule={"name": "staggered", "period": 4, "span": 16})
    return LM(LMConfig(**(cfg | kw))).double()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_loss_and_backward(arch):
    m = tiny(arch)
    idx = torch.randint(0, 97, (2, 21))
    logits, loss = m(idx, targets=idx)
    assert logits.shape == (2, 21, 97) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_parameter_counts_are_balanced():
    counts = {a: LM(LMConfig(arch=a, vocab_size=8192)).num_params() for a in ARCHS}
    ref = counts["transformer"]
    for a, c in counts.items():
        assert abs(c - ref) / ref < 0.01, counts


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("T", [1, 6, 13])
def test_prefill_then_step_equals_forward(arch, T):
    m = tiny(arch)
    idx = torch.randint(0, 97, (2, 20))
    full, _ = m(idx)
    caches = m.allocate_caches(2, max_len=20)
    outs = [m(idx[:, :T], caches=caches)[0]]
    for t in range(T, 20):
        outs.append(m.step(idx[:, t], caches)[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_step_refuses_a_blown_up_state_at_the_logits(arch):
    """The layers' own NaN checks are off inside a step; a NaN in any layer's state still reaches
    the logits and is refused (and passes only with validate.CHECK_FINITE off)."""
    from transmamba.ops import validate

    m = tiny(arch)
    idx = torch.randint(0, 97, (2, 20))
    for layer in range(4):
        caches = m.allocate_caches(2, max_len=20)
        m(idx[:, :18], caches=caches)
        c = caches[layer]
        name = next(n for n in ("ssm_state", "k", "conv_state") if getattr(c, n, None) is not None)
        getattr(c, name)[1].view(-1)[3] = float("nan")  # row 1 only
        # refused at the logits, or earlier by a later layer's sign check (dt > 0 is False for NaN)
        with pytest.raises(validate.NumericalError, match=r"decoding step: the logits contains NaN|got min nan"):
            m.step(idx[:, 18], caches)
        assert validate.CHECK_FINITE  # restored after the failed step
    with validate.finite_checks(False):
        assert torch.isnan(m.step(idx[:, 19], caches)[1]).all()


def test_transpoints_override_moves_between_attention_and_ssm():
    m = tiny("transmamba")
    idx = torch.randint(0, 97, (1, 16))
    att = m(idx, transpoints=10**6)[0]
    ssm = m(idx, transpoints=0)[0]
    mid = m(idx, transpoints=8)[0]
    assert not torch.allclose(att, ssm)
    torch.testing.assert_close(mid[:, :8], att[:, :8])  # before P every layer is attention (causal)
    assert not torch.allclose(mid[:, 8:], att[:, 8:])
    assert m.transpoints_for(16) == [0, 4, 8, 12]


def test_generate_greedy_matches_repeated_forward():
    m = tiny("transmamba")
    idx = torch.randint(0, 97, (1, 5))
    out = m.generate(idx, 6, temperature=0)
    seq = idx
    for _ in range(6):
        nxt = m(seq, transpoints=m.transpoints_for(11))[0][:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_bad_input():
    m = tiny("transformer")
    with pytest.raises(ValueError, match="idx"):
        m(torch.randn(2, 3))
    with pytest.raises(ValueError, match="outside"):
        m(torch.tensor([[1, 500]]))
    with pytest.raises(ValueError, match="arch"):
        LMConfig(arch="rnn")


def test_set_schedule_persists_in_the_config_or_only_for_training():
    lm = LM(LMConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, head_dim=8, d_state=8, chunk_size=4,
                     schedule={"name": "per_layer", "P": [0, 4]}))
    lm.set_schedule({"name": "fixed", "P": 2}, persist=False)  # e.g. annealing: the saved config keeps its target
    assert lm.transpoints_for(8) == [2, 2] and lm.cfg.schedule == {"name": "per_layer", "P": [0, 4]}
    lm.set_schedule({"name": "fixed", "P": 3})
    assert lm.transpoints_for(8) == [3, 3] and lm.cfg.schedule == {"name": "fixed", "P": 3}
    with pytest.raises(ValueError):
        lm.set_schedule({"name": "no-such-schedule"})
    assert lm.cfg.schedule == {"name": "fixed", "P": 3}  # a refused spec changes nothing
