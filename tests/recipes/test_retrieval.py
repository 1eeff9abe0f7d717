"""The retrieval recipe end to end through the engine (transmamba.recipes.retrieval), tiny.

Images are sklearn's 8x8 digits padded to 28x28 (standing in for Fashion-MNIST, labels 0..9); the
text side is `hashed_text_STAND_IN`, a TEST-ONLY random word-hash embedding (not MiniLM)."""

import json

import pytest
import torch

from transmamba.config import load_config
from tiny_fixtures import save_tiny_vit
from transmamba.recipes.retrieval import (RETRIEVAL_DEFAULTS, RetrievalStep, build_retrieval_data,
                                         build_retrieval_model, evaluate_retrieval, hard_candidates,
                                         train_retrieval)


def hashed_text_STAND_IN(texts):
    """(tokens "n m 12", mask, pooled) from a fixed random table indexed by a hash of each word."""
    table = torch.randn(97, 12, generator=torch.Generator().manual_seed(0))
    words = [t.replace(",", "").split() for t in texts]
    m = max(len(w) for w in words)
    tokens, mask = torch.zeros(len(texts), m, 12), torch.zeros(len(texts), m, dtype=torch.bool)
    for i, ws in enumerate(words):
        for j, w in enumerate(ws):
            tokens[i, j] = table[sum(map(ord, w)) % 97] + 0.1 * j
            mask[i, j] = True
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return tokens, mask, pooled


@pytest.fixture(scope="module")
def init_vit(tmp_path_factory):
    """A tiny RANDOM classifier ViT on 28x28 (patch 14, a 2x2 grid) for the teacher to start from."""
    return save_tiny_vit(tmp_path_factory.mktemp("ret") / "vit28", img_size=28, patch_size=14)


def _cfg(out, task, role, init_vit, teacher=None, extra=()):
    args = ["--data.dataset", "digits", "--role", role, "--out_dir", str(out), "--teacher_init", str(init_vit),
            "--retrieval.task", task, "--retrieval.train_n", "48", "--retrieval.test_n", "20",
            "--retrieval.n_galleries", "1", "--retrieval.d_embed", "8", "--retrieval.train_k", "4",
            "--retrieval.rerank_k", "5", "--retrieval.max_k", "6", "--retrieval.clip.canvas", "42",
            *(["--retrieval.clip.frames", "3", "--retrieval.clip.speed", "3"] if task == "twin_clips" else []),
            "--student.arch", "vim" if task == "grids" else "videomamba", "--student.patch_size", "14",
            "--student.d_model", "12", "--student.depth", "2", "--student.d_state", "4", "--student.bias", "true",
            "--init.layers", "2", "--init.calibrate", "false", "--init.calibrate_mlp", "false", "--data.calib_size", "16",
            "--head.d_state", "4", "--head.num_heads", "2", "--train.max_steps", "3", "--train.batch_size", "16",
            "--train.warmup_steps", "1", "--train.log_every", "1", "--train.threads", "1", "--train.progress", "false",
            "--train.eval_batch_size", "50", *extra]
    if teacher is not None:
        args += ["--teacher", str(teacher)]
    return load_config(None, args, defaults=RETRIEVAL_DEFAULTS)


def test_hard_candidates_put_the_positive_first_and_skip_same_captions():
    dual = torch.tensor([[0.0, 5.0, 4.0, 1.0], [1.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0], [9.0, 1.0, 2.0, 0.0]])
    cap = torch.tensor([0, 0, 1, 2])
    same = (cap[:, None] == cap[None, :])
    c = hard_candidates(dual, same, 3)
    assert c[:, 0].tolist() == [0, 1, 2, 3]
    assert c[0].tolist() == [0, 2, 3]  # visual 1 shares text 0's caption: not a negative
    assert c[3].tolist() == [3, 0, 2]


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, init_vit):
    """trained_teacher(task) -> (its out dir, train_retrieval's result): the dual-encoder teacher of a
    task, trained once per module for the tests that only read it (its files, or as a student's teacher)."""
    runs = {}

    def get(task):
        if task not in runs:
            out = tmp_path_factory.mktemp(f"ret-{task}") / "teacher"
            runs[task] = out, train_retrieval(_cfg(out, task, "teacher", init_vit, extra=["--fusion", "none"]),
                                              hashed_text_STAND_IN)
        return runs[task]

    return get


@pytest.mark.parametrize("task", ["grids", "clips", "twin_clips"])
def test_teacher_then_students_through_the_engine(tmp_path, init_vit, trained_teacher, task):
    t_out, res = trained_teacher(task)
    assert res["steps"] == 3 and (t_out / "vit" / "model.safetensors").is_file()
    assert (t_out / "recall.png").is_file() and (t_out / "metrics.csv").is_file()
    saved = json.loads((t_out / "result.json").read_text())
    assert 0.0 <= saved["t2v_r1"] <= saved["t2v_r5"] <= saved["t2v_r10"] <= 1.0
    assert len(saved["curves"]["t2v"]) == 6 and saved["gallery_size"] == (20 if task == "grids" else 80)
    facets = {"grids": (), "clips": ("item", "direction"), "twin_clips": ("items", "directions")}[task]
    for mode, fusion in (("scratch", "none"), ("transmamba", "cross_mamba"), ("transmamba", "cross_attention")):
        out = tmp_path / f"{mode}-{fusion}"
        r = train_retrieval(_cfg(out, task, "student", init_vit, teacher=t_out / "vit",
                                 extra=["--mode", mode, "--fusion", fusion]), hashed_text_STAND_IN)
        assert r["steps"] == 3 and r["distill"] == (mode == "transmamba")
        assert (r["params_fusion"] > 0) == (fusion != "none")
        assert all(torch.isfinite(torch.tensor(r["losses"])))
        assert (out / "recall.png").is_file()
        assert ("dual_t2v_r1" in r) == (fusion != "none")
        # clips say which part of the caption the top-1 clip gets right; grid captions have no facets
        assert sorted(k[len("t2v_r1_"):] for k in r if k.startswith("t2v_r1_")) == sorted(facets)
        assert ("dual_t2v_r1_" + facets[0] in r) == (fusion != "none") if facets else True
        for f in facets:
            assert r["t2v_r1"] <= r[f"t2v_r1_{f}"]
        assert ("t2v_twin_acc" in r) == (task == "twin_clips")
        assert ("dual_t2v_twin_acc" in r) == (task == "twin_clips" and fusion != "none")


def test_teacher_refuses_a_fusion(tmp_path, init_vit):
    with pytest.raises(ValueError, match="dual encoder"):
        train_retrieval(_cfg(tmp_path / "t", "grids", "teacher", init_vit, extra=["--fusion", "cross_mamba"]),
                        hashed_text_STAND_IN)


def test_an_untrained_reranker_keeps_the_first_stage_ranking(tmp_path, init_vit):
    """The re-ranker's match layer starts at zero, so at init the re-ranked text -> visual metrics
    equal the first stage's (dual_t2v_*); a constant shift of its score (the bias) keeps the order too."""
    cfg = _cfg(tmp_path / "s", "grids", "student", init_vit, extra=["--mode", "scratch", "--fusion", "cross_mamba"])
    data = build_retrieval_data(cfg, hashed_text_STAND_IN)
    model = build_retrieval_model(cfg, data)[0]
    ev = evaluate_retrieval(model, data, rerank_k=5, max_k=6)
    for k in ("r1", "r5", "r10", "medr"):
        assert ev[f"dual_t2v_{k}"] == ev[f"t2v_{k}"]
    with torch.no_grad():
        model.match.bias.fill_(1.0)  # a constant shift: the top-5 order is unchanged
    assert evaluate_retrieval(model, data, rerank_k=5, max_k=6)["t2v_r1"] == ev["t2v_r1"]


def test_teacher_window_reaches_every_distillation_call_and_a_bad_one_is_refused(tmp_path, init_vit, trained_teacher,
                                                                                 monkeypatch):
    from transmamba.models.vit import ViT

    t_out, _ = trained_teacher("grids")
    seen, forward = [], ViT.forward

    def recording(self, x, return_hidden=False, stats=None, window=0):
        seen.append(window)
        return forward(self, x, return_hidden, stats, window)

    monkeypatch.setattr(ViT, "forward", recording)
    extra = ["--mode", "transmamba", "--fusion", "none", "--distill.teacher_window", "1"]
    r = train_retrieval(_cfg(tmp_path / "s", "grids", "student", init_vit, teacher=t_out / "vit", extra=extra),
                        hashed_text_STAND_IN)
    assert r["steps"] == 3 and seen.count(1) == 3  # one windowed teacher call per step (init calls use 0)
    extra[-1] = "3"
    with pytest.raises(ValueError, match="window=3 must be a positive divisor"):
        train_retrieval(_cfg(tmp_path / "b", "grids", "student", init_vit, teacher=t_out / "vit", extra=extra),
                        hashed_text_STAND_IN)


def test_twin_clip_galleries_hold_twins_and_training_batches_keep_them_together(tmp_path, init_vit):
    cfg = _cfg(tmp_path / "s", "twin_clips", "student", init_vit, extra=["--mode", "scratch"])
    data = build_retrieval_data(cfg, hashed_text_STAND_IN)
    assert data["group"] == 2 and data["train"][0].shape[1:] == (3, 1, 42, 42)
    x, cap = data["test"]
    assert len(x) == 80 and len(set(cap.tolist())) == 80  # 40 twin pairs, each caption once
    f = data["facets"]
    assert (f["items"][0::2] == f["items"][1::2]).all() and (f["directions"][0::2] == f["directions"][1::2]).all()
    with pytest.raises(ValueError, match="multiples of group"):
        train_retrieval(_cfg(tmp_path / "odd", "twin_clips", "student", init_vit,
                             extra=["--mode", "scratch", "--train.batch_size", "15"]), hashed_text_STAND_IN)


def test_prefix_cross_mamba_reranker_trains_and_starts_as_the_first_stage(tmp_path, init_vit):
    """head.cross_mode prefix: the caption's tokens (padded to the longest) are scanned before the clip."""
    cfg = _cfg(tmp_path / "p", "twin_clips", "student", init_vit,
               extra=["--mode", "scratch", "--fusion", "cross_mamba", "--head.cross_mode", "prefix"])
    data = build_retrieval_data(cfg, hashed_text_STAND_IN)
    assert not bool(data["text"]["mask"].all())  # captions of different lengths: padding is exercised
    model = build_retrieval_model(cfg, data)[0]
    assert model.cross.mode == "prefix"
    ev = evaluate_retrieval(model, data, rerank_k=5, max_k=6)
    assert ev["dual_t2v_r1"] == ev["t2v_r1"] and ev["dual_t2v_twin_acc"] == ev["t2v_twin_acc"]
    r = train_retrieval(cfg, hashed_text_STAND_IN)
    assert r["steps"] == 3 and all(torch.isfinite(torch.tensor(r["losses"])))
    with pytest.raises(ValueError, match="cross_mode"):
        train_retrieval(_cfg(tmp_path / "bad", "twin_clips", "student", init_vit,
                             extra=["--fusion", "cross_mamba", "--head.cross_mode", "concat"]), hashed_text_STAND_IN)


@pytest.mark.parametrize("stop_grad", ["none", "scores", "all"])
def test_stop_grad_sets_where_the_reranker_loss_reaches(tmp_path, init_vit, stop_grad):
    """head.stop_grad: with "scores" the dual head (vis_proj, text_proj, temperature) gets the gradient
    of the dual InfoNCE alone, with "all" the backbone does too; the re-ranker always learns. The
    test tells all three apart."""
    cfg = _cfg(tmp_path / "sg", "twin_clips", "student", init_vit,
               extra=["--mode", "scratch", "--fusion", "cross_mamba", "--head.cross_mode", "prefix",
                      "--head.stop_grad", stop_grad])
    data = build_retrieval_data(cfg, hashed_text_STAND_IN)
    model = build_retrieval_model(cfg, data)[0].double()
    torch.nn.init.normal_(model.match.weight)  # a trained re-ranker: its score depends on the tokens
    step = RetrievalStep(model, {k: v.double() if v.is_floating_point() else v for k, v in data["text"].items()},
                         train_k=4, stop_grad=cfg["head"]["stop_grad"])
    x, cap = data["train"][0][:16].double(), data["train"][1][:16]

    def grads(which):
        model.zero_grad()
        loss, parts = step((x, cap), 0)
        (loss if which == "all" else parts["nce"]).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    g_all, g_dual = grads("all"), grads("dual")
    backbone = [n for n in g_dual if n.startswith("backbone.")]
    head = [n for n in g_dual if n.split(".")[0] in ("vis_proj", "text_proj", "scale")]
    assert backbone and len(head) >= 3 and g_all["cross.in_proj.weight"].abs().sum() > 0

    def unchanged(names):
        return all(torch.allclose(g_all[n], g_dual[n], rtol=1e-10, atol=1e-12) for n in names)

    assert unchanged(head) == (stop_grad != "none")
    assert unchanged(backbone) == (stop_grad == "all")


def test_stop_grad_rejects_an_unknown_value():
    with pytest.raises(ValueError, match="stop_grad"):
        RetrievalStep(torch.nn.Linear(1, 1), {"tokens": torch.zeros(1), "mask": torch.zeros(1), "pooled": torch.zeros(1)},
                      stop_grad=True)
