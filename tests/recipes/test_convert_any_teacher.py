"""Any teacher end to end: its own tokenizer, the lossless gate before work, no silent wrong run.

Tiny random teachers of three families (GQA with 1 KV head; a sliding window shorter than the
sequence; Gemma 3), each carrying its own small BPE tokenizer trained here (not SmolLM2's
vocabulary). One test per finding of the issue: each failed before (a wrong run that exited 0, a
traceback, a NaN) and passes now.
"""

import json

import pytest
import torch
from transformers import AutoTokenizer

from tiny_fixtures import run_tiny_convert, tiny_tokenizer
from tiny_teachers import tiny_teacher

FAMILIES = {"llama-gqa1": ("llama", {"num_key_value_heads": 1}),
            "mistral-window": ("mistral", {}),  # sliding window 8 < the 32-token windows
            "gemma3": ("gemma3", {})}


@pytest.fixture(scope="module")
def own_tok():
    return tiny_tokenizer(320, eos="</s>", bos="<s>")  # no <|endoftext|>: documents joined by its eos


def _teacher_dir(root, family, tok, **kw):
    name, over = FAMILIES[family]
    d = root / family
    tiny_teacher(name, vocab_size=len(tok), **{**over, **kw}).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_convert_runs_on_the_teachers_own_tokenizer(tmp_path, own_tok, family):
    d = _teacher_dir(tmp_path, family, own_tok)
    s = run_tiny_convert(tmp_path, d, "own", "--student.n_kv_heads", "1", transpoints="[0]")
    saved = AutoTokenizer.from_pretrained(tmp_path / "runs" / "own" / "student")
    assert saved.get_vocab() == own_tok.get_vocab() and len(saved) == 320  # the teacher's, not SmolLM2's 49152
    assert s["tokenizer"]["size"] == 320 and s["tokenizer"]["setting"] == "teacher"
    assert s["teacher"]["name"] == family and s["teacher"]["model_type"] == FAMILIES[family][0].replace(
        "gemma3", "gemma3_text") and s["teacher"]["params"] > 0
    assert all(map(lambda v: torch.isfinite(torch.tensor(v)), (s["val_ppl"], s["teacher_val_ppl"], s["init_val_ppl"])))
    assert s["teacher_val_ppl"] < 2 * 320  # its own ids: a random teacher near uniform over 320, not millions
    assert s["lossless_check"]["lossless"] and s["lossless_check"]["seq_len"] >= 32
    report = (tmp_path / "runs" / "own" / "report.md").read_text()
    assert f"teacher ({family})" in report and "SmolLM2" not in report
    summary = json.loads((tmp_path / "runs" / "own" / "summary.json").read_text())
    assert summary["teacher"]["name"] == family and summary["tokenizer"]["size"] == 320


def test_a_tokenizer_of_another_vocabulary_is_refused_by_name(tmp_path, own_tok):
    d = _teacher_dir(tmp_path, "llama-gqa1", own_tok)
    with pytest.raises(ValueError, match=r"data.tokenizer 'smollm2' \(49152 tokens\) does not have the vocabulary "
                                         r"of teacher llama-gqa1's own tokenizer \(320 tokens"):
        run_tiny_convert(tmp_path, d, "other", "--data.tokenizer", "smollm2")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tc").exists()


def test_a_teacher_without_a_tokenizer_needs_one(tmp_path, own_tok):
    d = tmp_path / "bare"
    tiny_teacher("llama", vocab_size=320).save_pretrained(d)
    with pytest.raises(ValueError, match="teacher bare holds no tokenizer"):
        run_tiny_convert(tmp_path, d, "bare")


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_before_work(tmp_path):
    """Finding 4: was an IndexError with a traceback in calibrate."""
    d = tmp_path / "small"
    tiny_teacher("llama", vocab_size=64).save_pretrained(d)
    with pytest.raises(ValueError, match=r"teacher small has 64 token embeddings, but data.tokenizer 'smollm2' "
                                         r"has 49152 ids"):
        run_tiny_convert(tmp_path, d, "small", "--data.tokenizer", "smollm2")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tc").exists()


def test_gemma3_attention_softcap_field_is_ignored_as_transformers_does():
    """Finding 2: transformers' Gemma 3 attention never applies attn_logit_softcapping; the student
    did (max logit diff 0.35). Now it is lossless."""
    from transmamba.teachers.check import check_model

    res = check_model(tiny_teacher("gemma3", attn_logit_softcapping=2.0), seq_len=24)
    assert res["lossless"] and res["rel_logit_diff"] < 1e-5


def test_convert_refuses_a_teacher_that_does_not_convert_losslessly(tmp_path, own_tok, monkeypatch):
    """Finding 2 (the gate): a conversion that differs from its teacher is refused before any work."""
    from transmamba.teachers import families as hf_families

    monkeypatch.setattr(hf_families.TeacherSpec, "switch_options", lambda self: {})  # drops Gemma 2's caps
    d = tmp_path / "gemma2"
    tiny_teacher("gemma2", vocab_size=len(own_tok)).save_pretrained(d)
    own_tok.save_pretrained(d)
    with pytest.raises(ValueError, match=r"teacher gemma2 \(gemma2\) does not convert losslessly at \d+ tokens"):
        run_tiny_convert(tmp_path, d, "g2")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tc").exists()


def test_dynamic_rope_past_its_length_is_said_and_refused(tmp_path, own_tok):
    """Finding 3: `teacher check` shortened its test silently; convert did not check at all."""
    from transmamba.teachers.check import check_model

    rope = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    res = check_model(tiny_teacher("llama", rope_parameters=rope, max_position_embeddings=24), seq_len=40)
    assert res["lossless"] and res["seq_len"] == 24 and "dynamic RoPE" in res["note"] and "not 40" in res["note"]
    d = tmp_path / "dyn"
    tiny_teacher("llama", vocab_size=len(own_tok), rope_parameters=rope, max_position_embeddings=24).save_pretrained(d)
    own_tok.save_pretrained(d)
    with pytest.raises(ValueError, match=r"dynamic RoPE .* max_position_embeddings=24 .* data.seq_len is 32"):
        run_tiny_convert(tmp_path, d, "dyn")
    assert not (tmp_path / "runs").exists()


def test_check_extends_past_the_sliding_window():
    from transmamba.teachers.check import check_model

    res = check_model(tiny_teacher("mistral"), seq_len=6)  # window 8
    assert res["seq_len"] == 8 + 16 and "sliding window" in res["note"] and res["lossless"]


def test_keep_attention_needs_layers_that_switch(tmp_path, own_tok):
    """Finding 6: with seq_len <= P every switch cost was 0 and layer 0 was 'chosen'."""
    d = _teacher_dir(tmp_path, "llama-gqa1", own_tok)
    with pytest.raises(ValueError, match=r"recipe.keep_attention 1: at data.seq_len 32 only 0 layer\(s\) switch"):
        run_tiny_convert(tmp_path, d, "ka", "--student.n_kv_heads", "1", "--student.schedule", "{name: fixed, P: 32}",
                         "--recipe.keep_attention", "1")
    assert not (tmp_path / "runs").exists()


def test_a_student_that_does_not_fit_is_refused_before_the_teacher_cache(tmp_path, own_tok):
    d = _teacher_dir(tmp_path, "llama-gqa1", own_tok)  # 1 KV head
    with pytest.raises(ValueError, match=r"teacher llama-gqa1: student n_kv_heads=2 is larger than the teacher's 1"):
        run_tiny_convert(tmp_path, d, "fit", "--student.n_heads", "2", "--student.n_kv_heads", "2")
    assert not (tmp_path / "tc").exists() and not (tmp_path / "runs").exists()


def test_the_legacy_dict_spec_is_refused():
    """Finding 7: the dict of teachers.load.teacher_spec built silently wrong students."""
    from transmamba.teachers.to_switch import switch_config_from_teacher
    from transmamba.teachers.load import teacher_spec

    with pytest.raises(TypeError, match="needs the TeacherSpec of teachers.families.inspect_teacher"):
        switch_config_from_teacher(teacher_spec(tiny_teacher("qwen2")))


def test_lossless_means_float_rounding_not_close():
    """Finding 8: a student off by one down_proj scaled by 1.001 (logit change ~1e-4) passed as
    lossless; now the bound is float32 rounding of the logits' spread (1e-5 x it). Here a 1.0001 scale."""
    from transmamba.teachers.check import LOSSLESS_RTOL, check_model, compare_logits, convert_full_size

    teacher = tiny_teacher("llama")
    exact = check_model(teacher, seq_len=24)
    assert exact["lossless"] and exact["dtype"] == "float32" and exact["rel_logit_diff"] < LOSSLESS_RTOL / 2
    student = convert_full_size(teacher)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    d0, scale = compare_logits(teacher, student, ids)
    with torch.no_grad():
        teacher.model.layers[1].mlp.down_proj.weight.mul_(1.0001)
    d1, _ = compare_logits(teacher, student, ids)
    assert d0 <= LOSSLESS_RTOL * scale < d1 / 10
