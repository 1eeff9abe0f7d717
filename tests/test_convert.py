"""`transmamba convert` end to end on a tiny local Llama teacher (real tokenizer and real text)."""

import json

import pytest
import torch

from transmamba.checkpoint import load_model
from transmamba.convert import convert_main
from transmamba.models.hf_llama import tiny_llama


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    tiny_llama(vocab_size=49152, tie_word_embeddings=True).save_pretrained(d)
    return d


def run(tmp_path, teacher_dir, name, *extra):
    cfg = tmp_path / "student.yaml"
    cfg.write_text("student: {n_layers: 2, d_model: 24, n_heads: 2, n_kv_heads: 1, d_ff: 32,"
                   " schedule: {name: staggered, period: 2, span: 32}}\n")
    argv = ["--teacher", str(teacher_dir), "--student", str(cfg), "--quiet", "--name", name,
            "--out_dir", str(tmp_path / "runs"), "--data.seq_len", "32", "--data.cache_windows", "4",
            "--data.calib_windows", "2", "--data.teacher_cache_dir", str(tmp_path / "tc"),
            "--train.tokens", "256", "--train.batch_size", "2", "--train.warmup_steps", "1",
            "--eval.batches", "1", "--eval.batch_size", "2", "--eval.transpoints", "[0, 16]",
            "--eval.speed_context", "8", "--eval.speed_tokens", "2", "--eval.prompt_tokens", "2",
            "--eval.prompts", "['ROMEO:']", *extra]
    return convert_main(argv)


def test_full_recipe_writes_a_loadable_student_and_report(tmp_path, teacher_dir):
    s = run(tmp_path, teacher_dir, "full")
    out = tmp_path / "runs" / "full"
    assert (out / "report.md").read_text().startswith("# transmamba convert")
    assert (out / "loss_curve.png").stat().st_size > 0
    assert (out / "transpoint_tradeoff.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["val_ppl"] == s["val_ppl"]
    assert s["transpoints"] == [0, 16] and set(s["transpoint_sweep_ppl"]) == {0, 16}
    assert s["steps"] == 4 and s["speed"]["student_tok_s"] > 0 and s["samples"][0]["student"] is not None
    model = load_model(out / "student")
    ids = torch.randint(0, 49152, (1, 5))
    assert model.generate(ids, 3, temperature=0).shape == (1, 8)


def test_recipes_differ_where_they_should(tmp_path, teacher_dir):
    scratch = run(tmp_path, teacher_dir, "scratch", "--recipe.subclone", "false", "--recipe.distill", "false")
    init = run(tmp_path, teacher_dir, "init", "--recipe.distill", "false")
    assert scratch["init_val_ppl"] != init["init_val_ppl"]  # subcloned weights vs random init
    anneal = run(tmp_path, teacher_dir, "anneal", "--recipe.anneal_frac", "0.5")
    assert anneal["transpoints"] == [0, 16]  # the target schedule is restored after annealing
    mamba2 = run(tmp_path, teacher_dir, "mamba2", "--student.schedule", "ssm")
    assert mamba2["transpoints"] == [0, 0]  # a pure Mamba-2 student


def test_bad_student_config_is_named(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match="d_model"):
        run(tmp_path, teacher_dir, "bad", "--student.d_model", "64")


def test_synthetic_decode_caches_time_the_same_work_as_real_ones():
    """The bench's filled caches have the sizes a real prefill leaves (so a step costs the same)."""
    from transmamba.bench.lm import _fill_caches, cache_nbytes
    from transmamba.models.lm import LM, LMConfig

    torch.manual_seed(0)
    m = LM(LMConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=2, head_dim=16, chunk_size=8,
                    schedule={"name": "per_layer", "P": [0, 6, 40]})).eval()
    real, fake = m.allocate_caches(1, max_len=24), m.allocate_caches(1, max_len=24)
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 20)), caches=real)
    _fill_caches(m, fake, 20)
    for r, f in zip(real, fake):
        assert r.pos == f.pos and (r.ssm_state is None) == (f.ssm_state is None)
        assert (r.k is None) or r.k[:, :20].shape == f.k.shape
    assert cache_nbytes(fake) <= cache_nbytes(real)  # real KV buffers may hold spare capacity
    with torch.no_grad():
        assert m.step(torch.tensor([3]), fake).shape == (1, 50)


def test_bench_student_option_errors(capsys):
    """`bench --student` names a convert config: a missing file or another bench is a clear error."""
    from transmamba.bench.convert import run
    from transmamba.cli import main

    with pytest.raises(FileNotFoundError, match="no/such.yaml"):
        run(student="no/such.yaml")
    with pytest.raises(SystemExit):
        main(["bench", "lm", "--student", "configs/convert/smollm2-switch.yaml"])
    assert "--student applies to 'bench convert' only" in capsys.readouterr().err
