"""TransMambaConfig / TransMambaForCausalLM / TransMambaCache: config coverage, save/load
round trip through AutoModelForCausalLM, generate() == LM.generate across TransPoints, constant
cache memory past P, pipeline with the SmolLM2 tokenizer, left padding == each row alone, and the
old checkpoint format still loading (and converting)."""

from dataclasses import fields

import pytest
import torch

import transmamba  # noqa: F401  (registers the model type)
from transmamba.hf import TransMambaCache, TransMambaConfig, TransMambaForCausalLM
from transmamba.models.lm import LM, LMConfig

TINY = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=2, head_dim=16, d_state=16, chunk_size=4,
            hybrid_attn_every=2)
CROSSING = {"name": "per_layer", "P": [2, 9, 14]}  # prompt 6 + 12 new tokens: layers 2 and 3 switch while decoding


def tiny_lm(seed=0, **kw) -> LM:
    torch.manual_seed(seed)
    return LM(LMConfig(**{**TINY, **kw})).double().eval()


def test_config_covers_every_lm_config_field_and_round_trips(tmp_path):
    from transmamba.hf.configuration_transmamba import RENAMED

    names = {f.name for f in fields(LMConfig)}
    cfg_fields = {f.name for f in fields(TransMambaConfig)}
    assert {RENAMED.get(n, n) for n in names} <= cfg_fields
    lm_cfg = LMConfig(**TINY, arch="transmamba", schedule=CROSSING, post_norms=True, final_softcap=30.0,
                      switch_options={"qk_norm": "head", "attn_softcap": 50.0},
                      switch_layer_options=[{"rope": False}, {}, {"sliding_window": 4}], tie_embeddings=False)
    c = TransMambaConfig.from_lm_config(lm_cfg)
    assert c.model_type == "transmamba" and c.hidden_size == 32 and c.num_hidden_layers == 3
    c.save_pretrained(tmp_path)
    from transformers import AutoConfig

    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, TransMambaConfig) and back.to_lm_config() == lm_cfg
    with pytest.raises(ValueError, match="arch"):
        TransMambaConfig(arch="nope")


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_round_trips_through_automodel(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    lm = tiny_lm(tie_embeddings=tie, schedule=CROSSING).float()
    TransMambaForCausalLM.from_lm(lm).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    m = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(m, TransMambaForCausalLM)
    sd, ref = m.model.state_dict(), lm.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert (m.model.lm_head.weight is m.model.embed.weight) == tie
    idx = torch.randint(0, 64, (2, 11))
    torch.testing.assert_close(m(idx).logits, lm(idx)[0], rtol=0, atol=0)


def test_forward_loss_matches_lm_and_has_gradients():
    lm = tiny_lm(schedule=CROSSING)
    m = TransMambaForCausalLM.from_lm(lm)
    idx = torch.randint(0, 64, (2, 12))
    out = m(idx, labels=idx)
    _, ref = lm(idx[:, :-1], targets=idx[:, 1:])
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    g = lm.embed.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("arch", ["transmamba", "hybrid", "mamba2", "transformer"])
def test_greedy_generate_equals_lm_generate_across_transpoints(arch):
    lm = tiny_lm(arch=arch, schedule=CROSSING)
    m = TransMambaForCausalLM.from_lm(lm)
    idx = torch.randint(0, 64, (2, 6))
    ref = lm.generate(idx, 12, temperature=0)
    out = m.generate(idx, max_new_tokens=12, do_sample=False)
    assert out.tolist() == ref.tolist()


def test_generate_schedule_depends_on_total_length_and_explicit_transpoints():
    lm = tiny_lm(schedule="staggered")
    m = TransMambaForCausalLM.from_lm(lm)
    idx = torch.randint(0, 64, (1, 5))
    assert m.generate(idx, max_new_tokens=9, do_sample=False).tolist() == lm.generate(idx, 9, temperature=0).tolist()
    out = m.generate(idx, max_new_tokens=9, do_sample=False, transpoints=[7, 7, 7])
    assert out.tolist() == lm.generate(idx, 9, temperature=0, transpoints=[7, 7, 7]).tolist()


def test_cache_converts_at_p_and_stops_growing():
    lm = tiny_lm(schedule={"name": "fixed", "P": 8})
    cache = TransMambaCache(lm, max_len=None)
    m = TransMambaForCausalLM.from_lm(lm)
    ids = torch.randint(0, 64, (1, 3))
    out = m(ids, cache=cache, use_cache=True)
    sizes = []
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(12):
        out = m(nxt, cache=out.cache)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sizes.append(cache.nbytes())
    assert cache.get_seq_length() == 15
    assert all(c.k is None and c.ssm_state is not None for c in cache.caches)  # converted, KV freed
    assert len(set(sizes[5:])) == 1 and sizes[5] < sizes[4]  # position 8 = P: converted, then constant
    with pytest.raises(ValueError, match="cropped"):
        cache.crop(1)


def test_sampling_options_and_eos_and_streamer():
    from transformers.generation.streamers import BaseStreamer

    lm = tiny_lm(schedule=CROSSING)
    m = TransMambaForCausalLM.from_lm(lm)
    idx = torch.randint(0, 64, (2, 6))
    torch.manual_seed(0)
    a = m.generate(idx, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    torch.manual_seed(0)
    b = m.generate(idx, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    assert a.shape == (2, 14) and a.tolist() == b.tolist()
    greedy = m.generate(idx[:1], max_new_tokens=8, do_sample=False)
    eos = int(greedy[0, 8])  # the 3rd new token (or an earlier one, if the same)
    first = 6 + greedy[0, 6:].tolist().index(eos)
    stopped = m.generate(idx[:1], max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert stopped.shape[1] == first + 1 < 14 and stopped[0, -1] == eos

    class Collect(BaseStreamer):
        def __init__(self):
            self.got = []

        def put(self, value):
            self.got.append(value.flatten().tolist())

        def end(self):
            self.got.append("end")

    s = Collect()
    m.generate(idx[:1], max_new_tokens=4, do_sample=False, streamer=s)
    assert s.got[-1] == "end" and len(s.got) == 6  # the prompt, 4 tokens, end


@pytest.mark.parametrize("arch", ["transmamba", "hybrid", "mamba2", "transformer"])
def test_left_padded_batch_equals_each_row_alone(arch):
    """Logits at real positions and greedy tokens: rows of different lengths, TransPoints inside the
    prompt (layer 1 at 2) and crossed while decoding (the row-dependent per-row P of layer 3)."""
    lm = tiny_lm(arch=arch, schedule={"name": "per_layer", "P": [2, 5, 11]})
    m = TransMambaForCausalLM.from_lm(lm)
    rows = [torch.randint(0, 64, (6,)), torch.randint(0, 64, (9,)), torch.randint(0, 64, (4,))]
    L = 9
    pad = torch.tensor([L - len(r) for r in rows])
    idx = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), r]) for r in rows])
    mask = (torch.arange(L)[None] >= pad[:, None]).long()
    logits = m(idx, attention_mask=mask).logits
    for r, row in enumerate(rows):
        torch.testing.assert_close(logits[r, int(pad[r]):], lm(row[None])[0][0], rtol=1e-10, atol=1e-10)
    out = m.generate(idx, attention_mask=mask, max_new_tokens=8, do_sample=False)
    for r, row in enumerate(rows):
        assert out[r, L:].tolist() == lm.generate(row[None], 8, temperature=0)[0, -8:].tolist()


def test_bad_masks_and_inputs_are_refused():
    m = TransMambaForCausalLM.from_lm(tiny_lm())
    idx = torch.randint(0, 64, (2, 5))
    with pytest.raises(ValueError, match="left padding"):
        m(idx, attention_mask=torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="inputs_embeds"):
        m(inputs_embeds=torch.zeros(2, 5, 32))
    with pytest.raises(ValueError, match="pad"):
        m.model(idx, pad=torch.tensor([1.0, 0.0]))


def test_pipeline_with_the_smollm2_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, pipeline

    from transmamba.data.text import load_tokenizer
    from transmamba.hf.student import save_hf

    tok = load_tokenizer("smollm2")  # the shared cache/text: read from the GGUF once per machine
    torch.manual_seed(0)
    lm = LM(LMConfig(**{**TINY, "vocab_size": len(tok), "d_model": 16, "n_heads": 1}, schedule=CROSSING)).eval()
    save_hf(lm, tmp_path / "student", tok)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(tmp_path / "student")
    gen = pipeline("text-generation", model=model, tokenizer=tok2)
    out = gen("To be, or not to be", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("To be, or not to be")
    ids = tok2("To be, or not to be", return_tensors="pt").input_ids
    ref = lm.generate(ids, 5, temperature=0)
    assert model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None).tolist() == ref.tolist()


def test_old_checkpoint_format_still_loads_and_converts(tmp_path):
    from transmamba.io.checkpoint import save_checkpoint
    from transmamba.hf.student import convert_to_hf, is_hf_dir, load_model

    lm = tiny_lm(schedule=CROSSING).float()
    save_checkpoint(tmp_path / "old", lm, None, 3, {"model": lm.cfg.to_dict()})
    old = load_model(tmp_path / "old")
    assert not is_hf_dir(tmp_path / "old")
    new_dir = convert_to_hf(tmp_path / "old", tmp_path / "new")
    assert is_hf_dir(new_dir)
    new = load_model(new_dir)
    idx = torch.randint(0, 64, (1, 10))
    torch.testing.assert_close(new(idx)[0], old(idx)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="already"):
        convert_to_hf(new_dir, tmp_path / "again")


def test_generate_cli_reads_an_hf_student(tmp_path, capsys):
    from transmamba.cli import main
    from transmamba.data.text import load_tokenizer
    from transmamba.hf.student import save_hf

    tok = load_tokenizer("smollm2")  # the shared cache/text: read from the GGUF once per machine
    torch.manual_seed(0)
    save_hf(LM(LMConfig(**{**TINY, "vocab_size": len(tok), "d_model": 16, "n_heads": 1})), tmp_path / "s", tok)
    assert main(["generate", "--checkpoint", str(tmp_path / "s"), "--prompt", "ROMEO:", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
