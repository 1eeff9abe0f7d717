"""`transmamba eval --quick`: a tiny random student (HF format) and a tiny Llama teacher, one report
with every metric side by side and % of teacher; bad input is an `error:` line and exit 2."""

import json

import pytest
import torch

from transmamba.cli import main


def test_quick_eval_writes_a_teacher_relative_report(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from transmamba.data.text import load_tokenizer
    from transmamba.models.lm import LM, LMConfig
    from transmamba.hf.student import save_hf

    tok = load_tokenizer("smollm2")  # the shared cache/text: read from the GGUF once per machine
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=2, n_heads=1, head_dim=16, d_state=16,
                     chunk_size=8, schedule={"name": "per_layer", "P": [0, 40]}))
    save_hf(lm, tmp_path / "student", tok,
            run_info={"convert": {"data": {"sources": [{"files": "mine/*.txt", "weight": 1.0}]}}})
    (tmp_path / "ood.txt").write_text("The Python Software Foundation license permits use and redistribution. " * 20)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           max_position_embeddings=512))
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
                 "--quick", "--out", str(out), "--text", str(tmp_path / "ood.txt"),
                 "--cache-dir", str(tmp_path / "tc")]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {(r["length"], r["bucket"]): r for r in res["text_perplexity"]}  # --text: by bucket, with the ratio
    assert set(rows) == {(32, "all"), (32, "0-32"), (64, "all"), (64, "0-64")}
    assert rows[(64, "all")]["ratio"] == pytest.approx(rows[(64, "all")]["student"] / rows[(64, "all")]["teacher"])
    assert "text_ppl@64[0-64]" in res["table"]
    md = (out / "report.md").read_text()
    assert "distilled on: data.sources" in md and "mine/*.txt" in md and f"--text {tmp_path / 'ood.txt'}" in md
    assert "## Held-out text" in md and "## Greedy generation vs the teacher" in md and "## Generative task" in md
    agree = {(r["set"], r["tokens"]) for r in res["generation"]["agreement"]}
    assert agree >= {("plain", 4), ("plain", 8)}
    assert {r["task"] for r in res["generation"]["task"]} == {"all", "addition", "copy"}
    table = res["table"]
    for key in ("ppl@64", "passkey@96", "needle@48", "tm_cloze.acc", "tm_nextline.acc", "decode_ms@32", "cache_mb@32"):
        assert key in table and table[key]["teacher"] is not None, key
    assert table["ppl@64"]["pct_of_teacher"] > 0
    assert (out / "report.md").read_text().count("% of teacher") == 1
    assert "| metric | student | teacher (teacher) | student / teacher | % of teacher |" in md
    assert "thread(s), one measurement of each model." in md and res["speed_setup"]["threads"] >= 1
    assert (out / "passkey_student.png").exists() and (out / "needle_teacher.png").exists()


def _tiny_student_and_teacher(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from transmamba.data.text import load_tokenizer
    from transmamba.hf.student import save_hf
    from transmamba.models.lm import LM, LMConfig

    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=2, n_heads=1, head_dim=16, d_state=16,
                     chunk_size=8, schedule={"name": "per_layer", "P": [0, 40]}))
    save_hf(lm, tmp_path / "student", tok)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           max_position_embeddings=512))
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    return tmp_path / "student", tmp_path / "teacher"


def test_quality_suite_runs_its_parts_and_reuses_the_teachers_results(tmp_path, monkeypatch):
    """--suite quality: perplexity and generation only; with --teacher-cache the second run reads the
    teacher's results instead of running it, and writes the same report; another suite misses the cache."""
    student, teacher = _tiny_student_and_teacher(tmp_path)
    args = ["eval", "--model", str(student), "--teacher", str(teacher), "--quick", "--suite", "quality",
            "--teacher-cache", str(tmp_path / "tcache")]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    assert a["parts"] == ["perplexity", "text", "generation"] and "teacher_results_from" not in a
    assert set(a["student"]) == {"perplexity", "tokenizer_key", "generation", "seconds"}
    assert len(list((tmp_path / "tcache").glob("teacher-*.json"))) == 1
    from transmamba.hardware import precision as P

    real = P.resolve_amp  # the second run's precision words differ (a re-measured speed ratio): still a hit
    monkeypatch.setattr(P, "resolve_amp", lambda *a, **k: P.Precision(real(*a, **k).amp, "auto", "re-measured 1.7x"))
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["teacher_results_from"].startswith(str(tmp_path / "tcache"))
    assert b["teacher"] == a["teacher"] and b["table"] == a["table"]
    same = lambda d: (tmp_path / d / "report.md").read_text().replace("re-measured 1.7x", a["precision"].split(" (")[1][:-1])  # noqa: E731
    assert same("a") == same("b")  # the same report but for the precision's words
    assert main(args[:-2] + ["--parts", "perplexity", "--teacher-cache", str(tmp_path / "tcache"),
                             "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "results.json").read_text())
    assert "teacher_results_from" not in c and set(c["student"]) == {"perplexity", "tokenizer_key", "seconds"}
    assert len(list((tmp_path / "tcache").glob("teacher-*.json"))) == 2


@pytest.mark.parametrize("suite,parts,msg", [("nope", None, "--suite"), ("default", "perplexity,speedy", "speedy"),
                                             ("quick", None, "--suite")])
def test_bad_suite_or_part_is_refused(suite, parts, msg):
    from transmamba.evaluation.report import suite_spec

    with pytest.raises(ValueError, match=msg):
        suite_spec(suite, parts=parts)


def test_eval_bad_model_dir_is_an_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--quick"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow  # the real SmolLM2 teacher (~20 s on a fresh machine): make test-slow, CI
def test_smollm2_teacher_loads_as_model_and_tokenizer():
    """`--teacher smollm2` (the default teacher) gives a transformers model in eval mode and its tokenizer."""
    from transmamba.evaluation.report import load_hf_model

    model, tok = load_hf_model("smollm2")
    assert not model.training and model.config.vocab_size == len(tok) == 49152


def _fake_results(hits_s, hits_t, trials=10):
    """A results dict as run_eval makes it (two retrieval lengths, one probe length), made up."""
    from transmamba.evaluation.intervals import accuracy

    def grid(hits):
        return {"lengths": [1024, 2048], "depths": [0.0, 1.0], "acc": [[k / trials for k in row] for row in hits],
                "trials": trials, "hits": hits, "ci": [[accuracy(k, trials)["ci"] for k in row] for row in hits],
                "by_length": [{"length": L, **accuracy(sum(row), 2 * trials)} for L, row in zip([1024, 2048], hits)]}

    def res(hits):
        return {"perplexity": {"1024": {"ppl": 10.0, "buckets": {}}}, "passkey": grid(hits), "needle": grid(hits),
                "probe": {"kv": {**accuracy(hits[0][0], trials), "logp": -1.0,
                                 "by_length": [{"length": 1024, **accuracy(hits[0][0], trials), "logp": -1.0}]}},
                "lm_eval": {}, "speed": {"prefill": {}, "decode": {}}, "seconds": {"passkey": 1.0}}

    return {"model": "m", "suite": "default", "teacher_name": "t", "precision": "none", "student": res(hits_s),
            "teacher": None if hits_t is None else res(hits_t)}


def test_report_gives_retrieval_accuracy_with_intervals_and_pct_of_teacher(tmp_path):
    from transmamba.evaluation.report import SUITES, write_report
    from transmamba.evaluation.intervals import wilson_interval

    assert SUITES["default"]["ret_trials"] >= 10 and len(SUITES["default"]["depths"]) == 5
    assert SUITES["default"]["ret_lengths"] == [1024, 2048, 4096, 8192]
    results = _fake_results([[7, 10], [0, 3]], [[10, 10], [0, 0]])
    write_report(tmp_path, results)
    rows = {(r["task"], r["length"]): r for r in json.loads((tmp_path / "results.json").read_text())["retrieval"]}
    assert set(rows) == {(k, L) for k in ("passkey", "needle") for L in (1024, 2048)} | {("probe_kv", 1024)}
    r = rows[("passkey", 1024)]
    assert r["student"]["acc"] == 0.85 and r["student"]["ci"] == pytest.approx(list(wilson_interval(17, 20)))
    assert r["teacher"]["acc"] == 1.0 and r["pct_of_teacher"] == pytest.approx(85.0)
    assert rows[("passkey", 2048)]["pct_of_teacher"] is None  # the teacher scores 0
    assert rows[("probe_kv", 1024)]["pct_of_teacher"] == pytest.approx(70.0)
    assert results["student"]["passkey"]["pct_of_teacher"] == [[70.0, 100.0], [None, None]]
    assert results["table"]["probe_kv@1024"]["pct_of_teacher"] == pytest.approx(70.0)
    assert results["table"]["passkey@1024"]["student"] == 0.85  # the old fields stay
    md = (tmp_path / "report.md").read_text()
    assert "| passkey | 1024 | 0.85 [0.64, 0.95] (17/20) | 1.00 [0.84, 1.00] (20/20) | 85 |" in md
    alone = _fake_results([[1, 2], [3, 4]], None)  # no teacher: intervals, no ratio
    write_report(tmp_path, alone)
    assert all(r["teacher"] is None and r["pct_of_teacher"] is None for r in alone["retrieval"])


def test_eval_refuses_bad_text_before_writing(tmp_path, capsys):
    """--text that matches nothing, or is shorter than one window, is an error before any file is written."""
    from transmamba.data.text import load_tokenizer
    from transmamba.hf.student import save_hf
    from transmamba.models.lm import LM, LMConfig

    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=1, head_dim=16, d_state=16, chunk_size=8))
    save_hf(lm, tmp_path / "student", tok)
    (tmp_path / "short.txt").write_text("Too short.")
    for text, what in (("nothing/*.txt", "matches no file"), (str(tmp_path / "short.txt"), "fewer than one window")):
        assert main(["eval", "--model", str(tmp_path / "student"), "--quick", "--out", str(tmp_path / "e"),
                     "--text", text, "--cache-dir", str(tmp_path / "tc")]) == 2
        assert what in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_distilled_on_names_the_data(tmp_path):
    from transmamba.evaluation.report import distilled_on

    assert distilled_on(str(tmp_path)).startswith("unknown")
    (tmp_path / "transmamba_run.json").write_text(json.dumps({"config": {"data": {"seq_len": 8}}}))
    assert "Shakespeare" in distilled_on(str(tmp_path))
    (tmp_path / "transmamba_run.json").write_text(json.dumps({"convert": {"data": {"sources": [{"teacher_samples": "c"}]}}}))
    assert distilled_on(str(tmp_path)) == 'data.sources [{"teacher_samples": "c"}]'


def test_out_of_domain_row_is_not_shakespeare(tmp_path):
    """The convert report's out-of-domain row: installed licence texts, perplexity of both models."""
    from tiny_fixtures import tiny_llama, tiny_tokenizer

    from transmamba.data.ood_text import ood_documents
    from transmamba.data.text import split_texts
    from transmamba.evaluation.report import out_of_domain_row
    from transmamba.evaluation.report_md import out_of_domain_metric, row_line
    from transmamba.models.lm import LM, LMConfig

    what, docs = ood_documents()
    assert "numpy" in what and "LICENSE" in what and sum(map(len, docs)) > 20000
    shakespeare = "\n".join(split_texts("train") + split_texts("val"))
    assert all(d[:200] not in shakespeare for d in docs)
    tok = tiny_tokenizer(300)
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=1, head_dim=16, d_state=16, chunk_size=8))
    row = out_of_domain_row(lm, tiny_llama(vocab_size=len(tok)), tok, seq_len=16, batch_size=2, n_batches=1)
    assert row["tokens"] == 32 and row["student"] > 1 and row["teacher"] > 1
    assert row_line(out_of_domain_metric(row)).startswith(f"| out-of-domain text: {what}, ppl, 16-token windows | "
                                                        f"{row['student']:.2f} | {row['teacher']:.2f} | ")


def _fake_convert_summary():
    """A `transmamba convert` summary with one row of each kind, made up."""
    return {"name": "c", "student_params": 1.2e6, "teacher_params": 1.6e6, "transpoints": [0, 16], "tokens": 256,
            "train_s": 1.0, "amp": "none", "amp_reason": "asked", "seq_len": 32,
            "teacher": {"name": "tiny", "model_type": "llama", "params": 1.6e6},
            "tokenizer": {"size": 300, "setting": "teacher"},
            "lossless_check": {"seq_len": 32, "rel_logit_diff": 0.0, "dtype": "float32"},
            "ppl_by_context": {"32": {"student": 12.0, "teacher": 10.0}}, "init_val_ppl": 50.0,
            "out_of_domain": {"what": "licences", "seq_len": 32, "student": 30.0, "teacher": 20.0, "tokens": 64},
            "speed": [{"context": 8, "batch": 1, "student_tok_s": 50.0, "teacher_tok_s": 25.0, "student_cache_mb": 1.0,
                       "teacher_cache_mb": 4.0, "synthetic_cache": True}],
            "prefill": [], "speed_rounds": 3, "prefill_rounds": 3, "cpu": "a cpu", "speed_threads": 2,
            "transpoint_sweep_ppl": {0: 13.0, 16: 12.0}, "samples": [{"prompt": "ROMEO:", "teacher": "a", "student": "b"}]}


def test_eval_and_convert_write_one_report(tmp_path, monkeypatch):
    """`transmamba eval` and `transmamba convert` write one report: the header and the main table of
    each are what report_md's `header_lines` / `table_lines` make (marked here), and each report holds
    one main table; a second table writer in either fails this."""
    import transmamba.evaluation.report_md as md
    from transmamba.evaluation.report import write_report as write_eval
    from transmamba.recipes.convert.report import write_report as write_convert

    for name in ("header_lines", "table_lines"):
        monkeypatch.setattr(md, name, lambda r, f=getattr(md, name), name=name: f(r) + [f"<{name}>"])
    (tmp_path / "e").mkdir()
    (tmp_path / "c").mkdir()
    reports = {"eval": write_eval(tmp_path / "e", _fake_results([[7, 10], [0, 3]], [[10, 10], [0, 0]])).read_text(),
               "convert": write_convert(tmp_path / "c", _fake_convert_summary()).read_text()}
    for who, text in reports.items():
        lines = text.splitlines()
        assert "<header_lines>" in lines and "<table_lines>" in lines, who
        assert text.count("| metric |") == 1 and text.count("distilled on:") == 1 and text.count("judged on:") == 1, who
        head = lines.index("<header_lines>") + 1  # the table follows the header
        assert lines[head].startswith("| metric | student | teacher") and lines[head].endswith(
            " | student / teacher | % of teacher |"), who
    assert "| ppl@1024 | 10 | 10 | 1.00x | 100.0 |" in reports["eval"]


def test_convert_report_rows_keep_their_values_and_add_pct_of_teacher(tmp_path):
    """Convert's rows: its values and student / teacher as before (2 decimals for perplexity, 1 for
    speeds and MB), and % of teacher (100 = as good; teacher ppl / student ppl, student tok/s /
    teacher tok/s, teacher MB / student MB); the speed note, the sweep and the samples."""
    from transmamba.recipes.convert.report import write_report

    text = write_report(tmp_path, _fake_convert_summary(), [{"files": "mine/*.txt"}]).read_text()
    for line in ("| metric | student | teacher (tiny) | student / teacher | % of teacher |",
                 "| held-out ppl, 32-token windows | 12.00 | 10.00 | 1.20x | 83.3 |",
                 "| out-of-domain text: licences, ppl, 32-token windows | 30.00 | 20.00 | 1.50x | 66.7 |",
                 "| held-out ppl at init (32) | 50.00 |  |  |  |",
                 "| decode tok/s at 8 context (batch 1, caches filled to size) | 50.0 | 25.0 | 2.00x | 200.0 |",
                 "| cache MB at 8 context, batch 1 | 1.0 | 4.0 | 0.25x | 400.0 |",
                 'distilled on: data.sources [{"files": "mine/*.txt"}]',
                 "judged on: the held-out split of data.sources; out-of-domain text: licences; "
                 "greedy samples on eval.prompts, beside the teacher's",
                 "Speeds: fp32 (training ran none: asked), a cpu, 2 thread(s), each the median of 3 rounds "
                 "alternating student and teacher.",
                 "| 16 | 12.00 |", "- student: 'b'", "![loss curve](loss_curve.png)"):
        assert line in text.splitlines(), line
    assert text.startswith("# transmamba convert: c\n") and (tmp_path / "transpoint_tradeoff.png").stat().st_size > 0


def test_retrieval_lengths_override_the_suites():
    from transmamba.evaluation.report import SUITES, suite_spec

    spec = suite_spec("retrieval", parts="passkey", ret_lengths=[2048, 1024])
    assert spec["ret_lengths"] == [1024, 2048] and spec["parts"] == ("passkey",)
    assert SUITES["retrieval"]["ret_lengths"] == [1024, 2048, 4096]  # the suite itself is untouched
    with pytest.raises(ValueError, match="--ret-lengths"):
        suite_spec("retrieval", ret_lengths=[8])
