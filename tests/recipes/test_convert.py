"""`transmamba convert` end to end on a tiny local Llama teacher (real tokenizer and real text)."""

import json
import math

import pytest
import torch

from transmamba.data.text import load_tokenizer
from transmamba.hf.student import load_model
from tiny_fixtures import run_tiny_convert, tiny_llama


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    tiny_llama(vocab_size=49152, tie_word_embeddings=True).save_pretrained(d)
    load_tokenizer("smollm2").save_pretrained(d)  # the teacher's own tokenizer (data.tokenizer: teacher)
    return d


def run(tmp_path, teacher_dir, name, *extra):
    return run_tiny_convert(tmp_path, teacher_dir, name, *extra, transpoints="[0, 16]")


def test_full_recipe_writes_a_loadable_student_and_report(tmp_path, teacher_dir):
    s = run(tmp_path, teacher_dir, "full", "--eval.ppl_contexts", "[64]", "--eval.prefill_contexts", "[16]",
            "--eval.prefill_rounds", "1", "--eval.speed_contexts", "[8, 24]", "--eval.speed_synthetic", "true", "--eval.speed_batches", "[1, 3]")
    out = tmp_path / "runs" / "full"
    assert set(s["ppl_by_context"]) == {"32", "64"} and s["ppl_by_context"]["32"]["student"] == s["val_ppl"]
    assert [(r["context"], r["batch"]) for r in s["speed"]] == [(8, 1), (8, 3), (24, 1), (24, 3)]
    assert s["speed"][3]["teacher_cache_mb"] == pytest.approx(3 * s["speed"][2]["teacher_cache_mb"])
    assert s["prefill"][0]["context"] == 16 and s["prefill"][0]["teacher_tok_s"] > 0 and s["prefill_rounds"] == 1
    assert s["speed_rounds"] != 1 and "; prefill: 1 round(s)." in (out / "report.md").read_text()
    assert "held-out ppl, 64-token windows" in (out / "report.md").read_text()
    ood = s["out_of_domain"]  # text in neither split (software licences), student and teacher on the same windows
    assert ood["what"].startswith("software licence texts") and ood["seq_len"] == 32 and ood["tokens"] > 0
    assert min(ood["student"], ood["teacher"]) > 1 and "| out-of-domain text: software licence texts" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()  # the one teacher-vs-student report (evaluation.report_md)
    assert md.startswith("# transmamba convert") and "distilled on: held-out-split Shakespeare" in md
    assert f"| metric | student | teacher ({s['teacher']['name']}) | student / teacher | % of teacher |" in md
    assert f"| held-out ppl at init (32) | {s['init_val_ppl']:.2f} |" in md
    v = s["ppl_by_context"]["64"]
    assert (f"| held-out ppl, 64-token windows | {v['student']:.2f} | {v['teacher']:.2f} | "
            f"{v['student'] / v['teacher']:.2f}x | {100 * v['teacher'] / v['student']:.1f} |") in md
    assert (out / "loss_curve.png").stat().st_size > 0
    assert (out / "transpoint_tradeoff.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["val_ppl"] == s["val_ppl"]
    assert s["transpoints"] == [0, 16] and set(s["transpoint_sweep_ppl"]) == {0, 16}
    assert s["steps"] == 4 and s["speed"][0]["student_tok_s"] > 0 and s["samples"][0]["student"] is not None
    parts = [s[k] for k in ("setup_s", "stages_s", "eval_s", "speed_s")]
    assert min(parts) > 0 and sum(parts) == pytest.approx(s["wall_s"]) and s["stages_s"] >= s["train_s"]
    assert f"Wall time {s['wall_s'] / 60:.1f} min" in (out / "report.md").read_text()
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


def test_bench_student_option_errors(capsys):
    """`bench --student` names a convert config: a missing file or another bench is a clear error."""
    from transmamba.bench.convert import run
    from transmamba.cli import main

    with pytest.raises(FileNotFoundError, match="no/such.yaml"):
        run(student="no/such.yaml")
    with pytest.raises(SystemExit):
        main(["bench", "lm", "--student", "configs/convert/smollm2-switch.yaml"])
    assert "--student applies to 'bench convert' and 'bench distill' only" in capsys.readouterr().err


def test_bf16_distillation_and_exact_resume(tmp_path, teacher_dir):
    """train.amp bf16 runs the distillation step under autocast; with checkpoints on, an interrupted
    distillation resumed with --resume logs the same losses as an uninterrupted one."""
    from transmamba.training.metrics import read_metrics

    s = run(tmp_path, teacher_dir, "bf16", "--train.amp", "bf16")
    assert s["amp"] == "bf16" and s["steps"] == 4 and math.isfinite(s["val_ppl"])
    full = run(tmp_path, teacher_dir, "full-ck", "--train.ckpt_every", "1", "--train.log_every", "1")
    with pytest.raises(FileExistsError, match="--resume"):
        run(tmp_path, teacher_dir, "full-ck", "--train.ckpt_every", "1")
    run(tmp_path, teacher_dir, "part", "--train.ckpt_every", "1", "--train.log_every", "1", "--train.halt_at_step", "2")
    run(tmp_path, teacher_dir, "part", "--train.ckpt_every", "1", "--train.log_every", "1", "--resume")
    key = ("step", "train_loss", "loss_kl", "loss_hidden", "lr")
    rows = [[tuple(r[k] for k in key) for r in read_metrics(tmp_path / "runs" / n / "metrics.csv")]
            for n in ("full-ck", "part")]
    assert rows[0] == rows[1] and len(rows[0]) == 4 and full["steps"] == 4


@pytest.mark.parametrize("distill", [True, False])
def test_distill_step_chunked_head_equals_reference_values_and_grads(distill):
    """DistillStep's chunked head + CE + KL + fast cosine == the full-logits reference (float64)."""
    import copy

    from transmamba.models.lm import LM, LMConfig
    from transmamba.recipes.convert import DEFAULTS, DistillStep

    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=40, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32, d_state=8,
                     chunk_size=4, arch="transmamba", schedule={"name": "staggered", "period": 2, "span": 8})).double()
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"]["seq_len"] = 9
    cfg["recipe"]["distill"] = distill
    cfg["train"] |= {"w_ce": 0.3, "w_kl": 1.5, "w_hidden": 0.7, "temperature": 2.0}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 40, (2, 9), generator=g), torch.randint(0, 40, (2, 9), generator=g)
    y[0, :2] = -100
    idx = torch.stack([torch.randperm(40, generator=g)[:5] for _ in range(18)]).view(2, 9, 5)
    logp = torch.log_softmax(torch.randn(2, 9, 5, generator=g, dtype=torch.float64), -1)
    hidden = [torch.randn(2, 9, 16, generator=g, dtype=torch.float64) for _ in range(3)]
    out = {}
    for ref in (False, True):
        step = DistillStep(lm, cfg, [0, 1, 2], torch.arange(16), reference=ref)
        loss, parts = step((x, y, idx, logp, *hidden), 3)
        grads = torch.autograd.grad(loss, list(lm.parameters()))
        out[ref] = (loss.detach(), {k: v.detach() for k, v in parts.items()}, grads)
    torch.testing.assert_close(out[False][0], out[True][0])
    assert out[False][1].keys() == out[True][1].keys()
    for k in out[True][1]:
        torch.testing.assert_close(out[False][1][k], out[True][1][k])
    for a, b in zip(out[False][2], out[True][2]):
        torch.testing.assert_close(a, b)


def test_layer_local_stage_runs_before_end_to_end(tmp_path, teacher_dir):
    s = run(tmp_path, teacher_dir, "local", "--recipe.local_tokens", "128", "--recipe.local_train", "mixer")
    out = tmp_path / "runs" / "local"
    assert s["local_steps"] == 2 and s["local_tokens"] == 128 and s["steps"] == 4
    assert math.isfinite(s["local_val_ppl"])
    rows = (out / "local" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "loss_local" in rows[0] and len(rows) >= 2


@pytest.mark.parametrize("name", ["demo", "smollm2-switch", "smollm2-switch-wide"])
def test_shipped_convert_configs_pass_the_rules(name):
    from transmamba.config import check_config, load_config
    from transmamba.recipes.convert import CONVERT_RULES, DEFAULTS

    cfg = load_config(f"configs/convert/{name}.yaml", defaults=DEFAULTS)
    check_config(cfg, CONVERT_RULES)
    assert cfg["train"]["amp"] == "auto"


@pytest.mark.slow  # the real SmolLM2 teacher and student (~35 s): make test-slow, CI
def test_bench_distill_quick_row_schema():
    """One tiny round of `bench distill` (batch 2): both sides run and the row has the schema."""
    from transmamba.bench.distill import rows

    r, = rows(steps=1, rounds=1, batch_size=1)
    assert r["name"] == "distill step" and r["L"] == 256 and r["ratio"] == pytest.approx(r["peer_ms"] / r["ours_ms"], rel=1e-2)
    assert r["tok_per_s_ours"] > 0 and r["peak_mb_peer"] >= 0
    assert r["amp_ours"] == "none (TRANSMAMBA_AMP=none)" and "ours_fp32_ms" not in r  # the suite pins auto to fp32


def test_keep_attention_makes_a_hybrid_student_that_saves_and_decodes_exactly(tmp_path, teacher_dir):
    from transmamba.modules.schedule import ATTENTION_ONLY

    s = run(tmp_path, teacher_dir, "hybrid", "--student.schedule", "{name: fixed, P: 8}",
            "--recipe.keep_attention", "1", "--recipe.keep_attention_windows", "2")
    costs, kept = s["switch_costs"], s["attention_layers"]
    assert len(costs) == 2 and kept == [max(range(2), key=lambda j: (costs[j], -j))]
    assert s["transpoints"][kept[0]] == ATTENTION_ONLY and s["transpoints"][1 - kept[0]] == 8
    assert "keep attention at every position" in (tmp_path / "runs" / "hybrid" / "report.md").read_text()
    model = load_model(tmp_path / "runs" / "hybrid" / "student")
    assert model.transpoints_for(32) == s["transpoints"]
    ids = torch.randint(0, 49152, (1, 6), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, 12, temperature=0)  # cached decoding across the switch at 8
    for t in range(6, 18):  # each token is the argmax of a full forward over its prefix
        assert int(out[0, t]) == int(model(out[:, :t])[0][0, -1].argmax())


def test_keep_attention_beyond_the_depth_is_refused_before_any_work(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match=r"keep_attention must be in \[0, 2\]"):
        run(tmp_path, teacher_dir, "bad", "--recipe.keep_attention", "3")
    assert not (tmp_path / "runs" / "bad").exists()


def test_speeds_are_medians_of_rounds_alternating_student_and_teacher(monkeypatch):
    """A drift of the machine's speed hits both models alike: each round runs the student, then the
    teacher, and each speed is the median over the rounds."""
    import transmamba.evaluation.speed as speed
    from transmamba.evaluation.speed import speed_and_samples
    from transmamba.recipes.convert import DEFAULTS

    calls, ms = [], {"student": iter([10.0, 30.0, 20.0]), "teacher": iter([50.0, 40.0, 90.0])}

    def fake(who):
        def f(model, context, n_tokens, **kw):
            calls.append((who, context, kw["batch"]))
            return next(ms[who]), 1.0
        return f

    monkeypatch.setattr(speed, "decode_speed", fake("student"))
    monkeypatch.setattr(speed, "teacher_decode_speed", fake("teacher"))
    ev = DEFAULTS["eval"] | {"speed_contexts": [8], "speed_batches": [2], "speed_rounds": 3, "prompts": []}
    res = speed_and_samples(None, torch.nn.Linear(1, 1), {"eval": ev, "data": DEFAULTS["data"]}, None)
    assert calls == [("student", 8, 2), ("teacher", 8, 2)] * 3
    assert res["speed_rounds"] == 3
    assert res["speed"][0]["student_tok_s"] == pytest.approx(2 * 1e3 / 20.0)  # the median round
    assert res["speed"][0]["teacher_tok_s"] == pytest.approx(2 * 1e3 / 50.0)
    calls.clear()  # eval.speed_contexts []: no decoding rows (not the eval.speed_context default)
    res = speed_and_samples(None, torch.nn.Linear(1, 1), {"eval": ev | {"speed_contexts": []}, "data": DEFAULTS["data"]},
                            None)
    assert calls == [] and res["speed"] == []


def test_bad_prefill_rounds_is_named(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match="eval.prefill_rounds"):
        run(tmp_path, teacher_dir, "bad", "--eval.prefill_rounds", "0")


def test_keep_heads_saves_a_head_hybrid_student_that_decodes_exactly(tmp_path, teacher_dir):
    """recipe.keep_heads 1: the KV head whose switch costs most (on the cached windows) keeps attention;
    the saved student's schedule keeps exactly that head, and greedy decoding equals full forwards."""
    from transmamba.modules.schedule import ATTENTION_ONLY

    s = run(tmp_path, teacher_dir, "heads", "--student.schedule", "{name: fixed, P: 8}", "--student.n_kv_heads", "2",
            "--recipe.keep_heads", "1", "--recipe.keep_attention_windows", "2")
    costs = s["head_costs"]  # [layer, kv_head, cost], highest cost first
    assert sorted(c[:2] for c in costs) == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert [c[2] for c in costs] == sorted((c[2] for c in costs), reverse=True) and costs[0][2] > 0
    assert s["kept_heads"] == [costs[0][:2]]
    (layer, head), = s["kept_heads"]
    kept_layer = [8, 8]
    kept_layer[head] = ATTENTION_ONLY
    assert s["transpoints"][layer] == kept_layer and s["transpoints"][1 - layer] == 8  # one P per KV head there
    model = load_model(tmp_path / "runs" / "heads" / "student")
    assert model.cfg.schedule["name"] == "head_hybrid" and model.cfg.schedule["kept_heads"] == s["kept_heads"]
    assert model.transpoints_for(32) == s["transpoints"]
    ids = torch.randint(0, 49152, (1, 6), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, 12, temperature=0)  # cached decoding across the switch at 8
    for t in range(6, 18):
        assert int(out[0, t]) == int(model(out[:, :t])[0][0, -1].argmax())
    assert "keep attention at every position" in (tmp_path / "runs" / "heads" / "report.md").read_text()


@pytest.mark.parametrize("extra, match", [
    (("--recipe.keep_heads", "1", "--recipe.keep_attention", "1"), r"recipe.keep_heads \(1\) and recipe.keep_attention"),
    (("--recipe.keep_heads", "3"), r"recipe.keep_heads must be in \[0, 2\]"),
    (("--recipe.keep_heads_by", "votes"), "recipe.keep_heads_by"),
    (("--recipe.keep_heads", "1", "--recipe.keep_heads_ranking", "/nonexistent/ranking.json"), "no such file"),
])
def test_bad_keep_heads_is_refused_before_any_work(tmp_path, teacher_dir, extra, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run(tmp_path, teacher_dir, "bad", *extra)
    assert not (tmp_path / "runs" / "bad").exists()


def test_keep_heads_from_a_ranking_file_and_at_random(tmp_path, teacher_dir):
    """recipe.keep_heads_ranking: the file's top K heads are kept (no ranking computed); keep_heads_by
    random: K heads drawn by the recipe's seed, the same for the same seed."""
    import json

    f = tmp_path / "ranking.json"
    f.write_text(json.dumps({"ranking": [[1, 1, 9.0], [0, 0, 3.0], [0, 1, 1.0], [1, 0, 0.5]]}))
    common = ("--student.schedule", "{name: fixed, P: 8}", "--student.n_kv_heads", "2", "--recipe.keep_heads", "2")
    s = run(tmp_path, teacher_dir, "file", *common, "--recipe.keep_heads_ranking", str(f))
    assert s["kept_heads"] == [[0, 0], [1, 1]] and s["keep_heads_s"] == 0.0
    r1 = run(tmp_path, teacher_dir, "rand1", *common, "--recipe.keep_heads_by", "random")
    r2 = run(tmp_path, teacher_dir, "rand2", *common, "--recipe.keep_heads_by", "random")
    assert r1["kept_heads"] == r2["kept_heads"] and len(r1["kept_heads"]) == 2
