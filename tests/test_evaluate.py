"""`transmamba eval --quick`: a tiny random student (HF format) and a tiny Llama teacher, one report
with every metric side by side and % of teacher; bad input is an `error:` line and exit 2."""

import json

import torch

from transmamba.cli import main


def test_quick_eval_writes_a_teacher_relative_report(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from transmamba.data.text import load_tokenizer
    from transmamba.models.lm import LM, LMConfig
    from transmamba.student import save_hf

    tok = load_tokenizer("smollm2")  # the shared cache/text: read from the GGUF once per machine
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=2, n_heads=1, head_dim=16, d_state=16,
                     chunk_size=8, schedule={"name": "per_layer", "P": [0, 40]}))
    save_hf(lm, tmp_path / "student", tok)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           max_position_embeddings=512))
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
                 "--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    table = res["table"]
    for key in ("ppl@64", "passkey@96", "needle@48", "tm_cloze.acc", "tm_nextline.acc", "decode_ms@32", "cache_mb@32"):
        assert key in table and table[key]["teacher"] is not None, key
    assert table["ppl@64"]["pct_of_teacher"] > 0
    assert (out / "report.md").read_text().count("% of teacher") == 1
    assert (out / "passkey_student.png").exists() and (out / "needle_teacher.png").exists()


def test_eval_bad_model_dir_is_an_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--quick"]) == 2
    assert "error:" in capsys.readouterr().err


def test_smollm2_teacher_loads_as_model_and_tokenizer():
    """`--teacher smollm2` (the default teacher) gives a transformers model in eval mode and its tokenizer."""
    from transmamba.evaluate import load_hf_model

    model, tok = load_hf_model("smollm2")
    assert not model.training and model.config.vocab_size == len(tok) == 49152
