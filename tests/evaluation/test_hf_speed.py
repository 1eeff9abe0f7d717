"""transmamba.evaluation.hf_speed: one speed code path for our HF student and a transformers
teacher; the synthetic decode caches have the sizes a real prefill leaves."""

import pytest
import torch
from tiny_fixtures import tiny_llama

from transmamba.evaluation.hf_speed import cache_mb, hf_speed, synthetic_cache
from transmamba.hf.modeling_transmamba import TransMambaForCausalLM
from transmamba.models.lm import LM, LMConfig


def _student(P=(0, 6, 40)):
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=2, head_dim=16, chunk_size=8, d_state=8,
                     schedule={"name": "per_layer", "P": list(P)}))
    return TransMambaForCausalLM.from_lm(lm).eval()


@pytest.mark.parametrize("make", [_student, tiny_llama])
def test_synthetic_cache_is_sized_as_a_real_prefill(make):
    model, C = make(), 20
    with torch.no_grad():
        real = model(torch.randint(0, 50, (1, C)), use_cache=True).cache
        fake = synthetic_cache(model, C, max_new=4)
        # both continue: one more token, positions after the context
        nxt = torch.tensor([[3]])
        lr = model(nxt, cache=real, use_cache=True, position_ids=torch.tensor([[C]])).logits
        lf = model(nxt, cache=fake, use_cache=True, position_ids=torch.tensor([[C]])).logits
    assert lr.shape == lf.shape and torch.isfinite(lf).all()
    assert 0 < cache_mb(fake) <= cache_mb(real)  # a real prefill's KV buffers may hold spare capacity
    if isinstance(model, TransMambaForCausalLM):
        kinds = [(c.ssm_state is None, c.pos) for c in fake.caches]
        assert kinds == [(c.ssm_state is None, c.pos) for c in real.caches]  # layer 3 (P=40) still holds KV
    else:
        assert cache_mb(fake) == cache_mb(real)


def test_hf_speed_rows_say_how_the_cache_was_filled():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    assert synthetic_cache(gpt2, 8, 2) is None  # not a family we can size: prefilled for real
    for model, filled in ((_student(), True), (tiny_llama(), True), (gpt2, False)):
        r = hf_speed(model, [12], prefill_lengths=[8, 16], n_tokens=2, synthetic=True)
        assert set(r["prefill"]) == {8, 16} and all(v > 0 for v in r["prefill"].values())
        row = r["decode"][12]
        assert row["synthetic_cache"] is filled and row["ms_per_token"] > 0 and row["cache_mb"] > 0
    assert hf_speed(_student(), [12], prefill_lengths=[], n_tokens=2)["decode"][12]["synthetic_cache"] is False


def test_a_sliding_window_cache_is_not_sized_by_random_keys():
    from transformers import MistralConfig, MistralForCausalLM

    from transmamba.evaluation.speed import random_kv_cache

    mistral = MistralForCausalLM(MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, sliding_window=8)).eval()
    assert synthetic_cache(mistral, 6, 2) is not None  # inside the window every key is kept
    assert synthetic_cache(mistral, 12, 2) is None  # past it, prefilled for real
    with pytest.raises(ValueError, match="sliding_window 8"):
        random_kv_cache(mistral.config, 12)
    assert hf_speed(mistral, [12], prefill_lengths=[], n_tokens=2, synthetic=True)["decode"][12]["synthetic_cache"] is False
