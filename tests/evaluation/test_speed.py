"""transmamba.evaluation.speed: decode timing and cache sizes for our LMs and HF teachers."""

import pytest
import torch
from tiny_fixtures import tiny_llama

from transmamba.evaluation.speed import (alternating_medians, cache_nbytes, decode_speed, fill_caches,
                                         teacher_decode_speed, teacher_kv_nbytes, time_ms)
from transmamba.models.lm import LM, LMConfig


def _lm(arch="transmamba", **kw):
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=2, head_dim=16, chunk_size=8, d_state=8,
                       arch=arch, schedule={"name": "per_layer", "P": [0, 6, 40]}, **kw)).eval()


@pytest.mark.parametrize("arch", ["transmamba", "transformer", "mamba2"])
def test_filled_caches_have_the_sizes_a_real_prefill_leaves(arch):
    m = _lm(arch)
    real, fake = m.allocate_caches(1, max_len=24), m.allocate_caches(1, max_len=24)
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 20)), caches=real)
    fill_caches(m, fake, 20)
    for r, f in zip(real, fake):
        assert type(r) is type(f)
        if hasattr(r, "transpoint"):  # Switch: KV before P, SSM state from P on
            assert r.pos == f.pos == 20 and (r.ssm_state is None) == (f.ssm_state is None)
            assert (r.k is None) == (f.k is None) and (r.k is None or r.k.shape == f.k.shape)
        elif hasattr(r, "length"):  # attention
            assert r.length == f.length == 20 and r.k.shape == f.k.shape
        else:  # Mamba
            assert r.seqlen == f.seqlen == 20 and r.ssm_state.shape == f.ssm_state.shape
    assert 0 < cache_nbytes(fake) == cache_nbytes(real)
    with torch.no_grad():
        logits = m.step(torch.tensor([3]), fake)
        m.step(torch.tensor([3]), real)
    assert logits.shape == (1, 50) and torch.isfinite(logits).all()
    assert cache_nbytes(fake) == cache_nbytes(real)  # decoding into the spare capacity, neither grows


def test_fill_caches_refuses_what_it_cannot_size():
    m = _lm("transformer")
    with pytest.raises(ValueError, match="max_len"):
        fill_caches(m, m.allocate_caches(1, max_len=8), 9)
    with pytest.raises(TypeError, match="unknown cache"):
        fill_caches(m, [object()] * 3, 4)
    with pytest.raises(TypeError, match="dataclass"):
        cache_nbytes([torch.zeros(1)])


@pytest.mark.parametrize("arch", ["transmamba", "transformer", "mamba2"])
def test_decode_speed_reports_time_and_cache_size(arch):
    ms, mib = decode_speed(_lm(arch), 12, 2, warmup=0)
    assert ms > 0 and mib > 0


def test_teacher_decode_speed_real_and_synthetic_caches_agree_in_size():
    teacher = tiny_llama()
    ms_r, mib_r = teacher_decode_speed(teacher, 10, 2, warmup=0)
    ms_s, mib_s = teacher_decode_speed(teacher, 10, 2, synthetic=True, warmup=0)
    assert ms_r > 0 and ms_s > 0
    assert mib_r == pytest.approx(mib_s)  # 2 layers x (K, V) x 2 kv heads x 12 positions x 8 x 4 bytes
    assert mib_r * 2**20 == 2 * 2 * 2 * 12 * 8 * 4
    assert teacher_kv_nbytes(None) == 0


def test_time_ms_is_a_median():
    calls = []
    assert time_ms(lambda: calls.append(1), reps=3, warmup=2) >= 0 and len(calls) == 5


def test_alternating_medians_runs_in_turn_and_keeps_the_last_extras():
    calls, ms = [], {"a": iter([3.0, 1.0, 2.0, 9.0]), "b": iter([5.0, 4.0, 6.0, 7.0])}

    def measure(who):
        def f():
            calls.append(who)
            return next(ms[who]), len(calls)
        return f

    (a, a_extra), (b, b_extra) = alternating_medians([measure("a"), measure("b")], 4)
    assert calls == ["a", "b"] * 4
    assert (a, b) == (2.5, 5.5) and (a_extra, b_extra) == (7, 8)
