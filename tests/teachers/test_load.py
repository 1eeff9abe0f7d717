"""Loading the Llama teacher from local HF directories, its spec, and (slow) the real SmolLM2."""

import json
import time
from pathlib import Path

import pytest
import torch

from tiny_fixtures import tiny_llama
from transmamba.teachers import load as H


def test_load_teacher_roundtrip(tmp_path):
    model = tiny_llama(seed=1)
    model.save_pretrained(tmp_path / "tiny")
    loaded, tok = H.load_teacher(tmp_path / "tiny")
    assert tok is None and not loaded.training
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    assert H.teacher_spec(loaded) == H.teacher_spec(model)


def test_missing_or_wrong_teacher(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        H.load_teacher(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        H.load_teacher(tmp_path / "empty")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(ValueError, match="gpt2"):
        H.load_teacher(tmp_path / "gpt2")


@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": True, "num_key_value_heads": 4,
                                     "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
                                     "head_dim": 16, "rms_norm_eps": 1e-6}])
def test_teacher_spec(kw):
    model = tiny_llama(**kw)
    spec = H.teacher_spec(model)
    attn = model.model.layers[0].self_attn
    assert spec["n_layers"] == len(model.model.layers) == 2
    assert spec["d_model"] == model.model.embed_tokens.weight.shape[1]
    assert spec["vocab"] == model.lm_head.weight.shape[0]
    assert spec["n_heads"] * spec["head_dim"] == attn.q_proj.weight.shape[0]
    assert spec["n_kv_heads"] * spec["head_dim"] == attn.k_proj.weight.shape[0]
    assert spec["d_ff"] == model.model.layers[0].mlp.up_proj.weight.shape[0]
    assert spec["tie_embeddings"] == (model.lm_head.weight is model.model.embed_tokens.weight)
    assert spec["rope_theta"] == kw.get("rope_parameters", {}).get("rope_theta", 1e4)
    assert spec["rms_eps"] == model.model.norm.variance_epsilon


@pytest.mark.slow
def test_real_smollm2_cache_matches_gguf():
    """Prepare the real SmolLM2 cache (or reuse it) and compare it with a fresh GGUF dequantization."""
    from gguf import GGUFReader, dequantize

    cache = Path(__file__).resolve().parents[1] / H.SMOLLM2_CACHE
    t0 = time.perf_counter()
    path = H.prepare_smollm2(cache)
    t_prepare = time.perf_counter() - t0
    assert H.prepare_smollm2(cache) == path  # second call: no-op
    cached, tok = H.load_teacher("smollm2", cache_dir=cache)
    ref, ref_tok = H.load_smollm2_gguf()
    spec = H.teacher_spec(cached)
    assert (spec["n_layers"], spec["d_model"], spec["n_heads"], spec["n_kv_heads"], spec["head_dim"],
            spec["d_ff"], spec["vocab"], spec["rope_theta"], spec["tie_embeddings"]) == \
        (30, 576, 9, 3, 64, 1536, 49152, 1e5, True)

    # one tensor dequantized straight from the file by gguf itself (no transformers in between)
    reader = GGUFReader(str(H.smollm2_gguf_path()))
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    emb = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(49152, 576).copy()).float()
    assert torch.equal(cached.model.embed_tokens.weight, emb)

    text = "The capital of France is"
    enc = tok(text, return_tensors="pt")
    assert enc.input_ids.tolist() == ref_tok(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        a, b = cached(**enc).logits, ref(**enc).logits
    assert torch.equal(a, b)
    assert tok.decode(a[0, -1].argmax()).strip() == "Paris"
    try:  # the from_pretrained(gguf_file=...) path needs `accelerate`
        import accelerate  # noqa: F401
        from transformers import AutoModelForCausalLM
        gg = H.smollm2_gguf_path()
        hf = AutoModelForCausalLM.from_pretrained(gg.parent, gguf_file=gg.name, dtype=torch.float32).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(**enc).logits, a, rtol=0, atol=1e-5)
    except ImportError:
        pass
    print(f"prepare_smollm2: {t_prepare:.1f} s")
