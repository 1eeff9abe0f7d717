"""Head-level TransPoints through the transformers wrapper: greedy `generate` == `LM.generate`
(heads crossing their P while decoding, left padding), beam-search row reordering of the per-group
caches, and the head-level schedule surviving save_pretrained / from_pretrained."""

import pytest
import torch

import transmamba  # noqa: F401  (registers the model type)
from transmamba.hf import TransMambaCache, TransMambaForCausalLM
from transmamba.models.lm import LM, LMConfig

TINY = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, chunk_size=4,
            arch="transmamba")
HEADS = {"name": "head_hybrid", "base": {"name": "per_layer", "P": [2, 9, 14]}, "kept_heads": [[0, 1], [2, 0]],
         "n_kv_heads": 2}  # prompt 6 + 12 new: layer 2's head 1 crosses while decoding, head 0 never


def tiny_lm(seed=0, **kw) -> LM:
    torch.manual_seed(seed)
    return LM(LMConfig(**{**TINY, "schedule": HEADS, **kw})).double().eval()


def test_greedy_generate_equals_lm_generate_with_head_level_transpoints():
    lm = tiny_lm()
    m = TransMambaForCausalLM.from_lm(lm)
    idx = torch.randint(0, 64, (2, 6))
    ref = lm.generate(idx, 12, temperature=0)
    assert m.generate(idx, max_new_tokens=12, do_sample=False).tolist() == ref.tolist()
    with torch.no_grad():  # the kept heads matter
        assert not torch.allclose(lm(ref)[0], lm(ref, transpoints=[2, 9, 14])[0], atol=1e-4)
    cache = TransMambaCache(lm, max_len=18)
    out = m.generate(idx, max_new_tokens=12, do_sample=False, past_key_values=cache)
    assert out.tolist() == ref.tolist()
    groups = cache.caches[2].groups  # layer 2: head 0 kept (its K/V), head 1 crossed at 14 (K/V freed)
    assert groups[0].heads == (0,) and groups[0].k is not None and groups[0].ssm_state is None
    assert groups[1].heads == (1,) and groups[1].k is None and groups[1].ssm_state is not None
    assert cache.nbytes() == sum(c.nbytes() for c in cache.caches)


def test_left_padded_generate_equals_each_row_alone():
    lm = tiny_lm()
    m = TransMambaForCausalLM.from_lm(lm)
    rows = [torch.randint(0, 64, (6,)), torch.randint(0, 64, (9,))]
    L = 9
    pad = torch.tensor([L - len(r) for r in rows])
    idx = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), r]) for r in rows])
    mask = (torch.arange(L)[None] >= pad[:, None]).long()
    out = m.generate(idx, attention_mask=mask, max_new_tokens=8, do_sample=False)
    for r, row in enumerate(rows):
        assert out[r, L:].tolist() == lm.generate(row[None], 8, temperature=0)[0, -8:].tolist()


def test_reorder_cache_moves_every_head_groups_rows():
    lm = tiny_lm()
    m = TransMambaForCausalLM.from_lm(lm)
    cache = TransMambaCache(lm, max_len=20)
    m(torch.randint(0, 64, (2, 10)), cache=cache, use_cache=True)
    before = [(s.k.clone() if s.k is not None else None, s.ssm_state.clone() if s.ssm_state is not None else None)
              for s in cache.caches[2].groups]
    cache.reorder_cache(torch.tensor([1, 0]))
    for (k, state), s in zip(before, cache.caches[2].groups):
        assert (k is None or torch.equal(s.k, k.flip(0))) and (state is None or torch.equal(s.ssm_state, state.flip(0)))
    assert any(k is not None for k, _ in before)


def test_save_pretrained_keeps_the_head_level_schedule(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_lm().float()
    TransMambaForCausalLM.from_lm(lm).save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.model.cfg.schedule == HEADS and back.model.transpoints_for(18) == lm.transpoints_for(18)
    idx = torch.randint(0, 64, (1, 18))
    torch.testing.assert_close(back(idx).logits, lm(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [[[1, 2, 3], 9, 14], [[1, -2], 9, 14]])
def test_bad_per_head_transpoints_in_generate_are_refused(bad):
    m = TransMambaForCausalLM.from_lm(tiny_lm())
    with pytest.raises(ValueError, match="transpoint"):
        m.generate(torch.randint(0, 64, (1, 4)), max_new_tokens=2, do_sample=False, transpoints=bad)
