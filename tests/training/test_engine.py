"""The one training loop (transmamba.training.engine) and its guard rails, through the LM recipe."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from transmamba.io import checkpoint as ck
from transmamba.recipes.lm import TextData, resolve_config, train
from transmamba.training.engine import NonFiniteLossError, shard
from transmamba.training.metrics import read_metrics

V = 32


def _data():
    rng = np.random.default_rng(0)
    ids = (np.arange(3000) % V).astype(np.uint16)
    ids[rng.random(3000) < 0.2] = rng.integers(0, V, 1).astype(np.uint16)
    return TextData(ids, (np.arange(200) % V).astype(np.uint16), V, "synthetic")


def _cfg(tmp_path, name="run", arch="transmamba", **train_kw):
    model = {"arch": arch, "vocab_size": V, "d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 8, "d_state": 8,
             "chunk_size": 8, "max_seq_len": 16, "schedule": {"name": "random", "choices": [0, 5, 16], "eval": 8}}
    tr = {"tokens": 6 * 4 * 16, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "log_every": 1,
          "eval_every": 3, "eval_batches": 1, "ckpt_every": 2, "progress": False}
    tr.update(train_kw)
    return {"name": name, "out_dir": str(tmp_path / name), "device": "cpu", "seed": 5, "model": model, "train": tr}


def _losses(cfg):
    return [r["train_loss"] for r in read_metrics(Path(cfg["out_dir"]) / "metrics.csv")]


def test_shard_splits_without_overlap():
    x, y = torch.arange(10), torch.arange(10) * 2
    parts = [shard((x, y, "meta"), r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), x) and [p[1] for p in parts] == [4, 3, 3]
    assert all(p[0][2] == "meta" for p in parts)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    a = _cfg(tmp_path, "a")
    b = _cfg(tmp_path, "b", grad_accum=2)
    train(a, data=_data())
    train(b, data=_data())
    assert _losses(a) == pytest.approx(_losses(b), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("arch", ["transmamba", "mamba2"])
def test_divergence_is_reported_not_a_kernel_error(tmp_path, arch):
    """A huge lr blows the weights up: the engine names the step and a good checkpoint, which loads
    and resumes; the weights that give Inf (a finite A_log whose exp overflows) are never saved."""
    cfg = _cfg(tmp_path, arch=arch, warmup_steps=0, ckpt_every=1, grad_clip=0.0, tokens=20 * 64, halt_at_step=2)
    train(cfg, data=_data())
    cfg["train"].update(lr=1e12, halt_at_step=None)
    with pytest.raises(NonFiniteLossError, match=r"diverged at step 3: .*last good checkpoint is .*step_0000002") as e:
        train(cfg, data=_data(), resume=True)
    good = Path(str(e.value).rsplit("last good checkpoint is ", 1)[1].split()[0].rstrip("."))
    assert ck.verify_checkpoint(good)
    sd = ck.load_state_dict(good)
    assert all(bool(torch.isfinite(t).all()) for t in sd.values())
    assert sorted(p.name for p in good.parent.iterdir()) == ["step_0000001", "step_0000002"]  # step 3 not written
    assert not (Path(cfg["out_dir"]) / ".lock").exists()  # released on the error
    cfg["train"].update(lr=1e-2, halt_at_step=3)
    assert train(cfg, data=_data(), resume=True)["step"] == 3  # the named checkpoint really is good


@pytest.mark.parametrize("key,value", [("train.lr", float("inf")), ("train.lr", float("nan")), ("train.lr", 0.0),
                                       ("train.lr", "1e400"), ("train.tokens", 0), ("train.batch_size", -1),
                                       ("train.seq_len", 0), ("model.d_model", 0), ("model.n_heads", 0),
                                       ("model.n_layers", -1), ("train.eval_every", -1), ("train.ckpt_every", 1.5),
                                       ("train.betas", [0.9]), ("train.betas", "0.9"), ("train.amp", "fp16")])
def test_bad_values_are_refused_at_config_time(tmp_path, key, value):
    from transmamba.config import parse_value, set_dotted

    cfg = resolve_config(_cfg(tmp_path))
    set_dotted(cfg, key, parse_value(value) if isinstance(value, str) else value)
    with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')}.*must be"):
        resolve_config(cfg)


def test_zero_periods_mean_off(tmp_path):
    cfg = _cfg(tmp_path, eval_every=0, ckpt_every=0, log_every=0)
    s = train(cfg, data=_data())
    rows = read_metrics(Path(cfg["out_dir"]) / "metrics.csv")
    assert [r["step"] for r in rows] == [6] and rows[-1]["val_loss"] is not None  # last step only
    assert s["checkpoint"] is None and not (Path(cfg["out_dir"]) / "checkpoints").exists()


def test_live_lock_refuses_a_second_run(tmp_path):
    from transmamba.training.run_lock import RunLock, RunLockedError

    cfg = _cfg(tmp_path)
    with RunLock(cfg["out_dir"]):
        with pytest.raises(RunLockedError, match=str(os.getpid())):
            train(cfg, data=_data())
    assert train(cfg, data=_data())["step"] == 6


def test_bf16_trains_and_stays_close_to_fp32(tmp_path):
    a = _cfg(tmp_path, "fp32")
    b = _cfg(tmp_path, "bf16", amp="bf16")
    sa, sb = train(a, data=_data()), train(b, data=_data())
    la, lb = _losses(a), _losses(b)
    assert sb["amp"] == "bf16" and all(math.isfinite(v) for v in lb)
    assert max(abs(x - y) for x, y in zip(la, lb)) < 0.05  # bf16 matmuls, fp32 state and weights
    assert lb != la  # autocast really ran
    assert json.loads((Path(b["out_dir"]) / "summary.json").read_text())["amp"] == "bf16"


def test_a_batch_too_small_to_split_is_refused(tmp_path):
    cfg = _cfg(tmp_path, batch_size=2, grad_accum=4)
    with pytest.raises(ValueError, match=r"batch of 2 examples .* 1 process\(es\) x 4 micro-batches"):
        train(cfg, data=_data())
