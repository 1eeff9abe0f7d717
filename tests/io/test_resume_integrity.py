"""Resume through the LM recipe (transmamba.recipes.lm -> training engine) over damaged checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transmamba.io import checkpoint as ck

V = 11


class TinyLM(nn.Module):
    """The LM interface in a few lines: embedding, one causal running-mean layer, tied head."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["vocab_size"], d)
        self.mix = nn.Linear(2 * d, d)
        self.head = nn.Linear(d, cfg["vocab_size"], bias=False)
        self.head.weight = self.embed.weight

    def transpoints_for(self, seq_len, step=None):
        return [0] * self.cfg["n_layers"]

    def forward(self, idx, targets=None, transpoints=None):
        x = self.embed(idx)
        mean = x.cumsum(1) / torch.arange(1, x.shape[1] + 1)[:, None]
        logits = self.head(x + torch.tanh(self.mix(torch.cat([x, mean], -1))))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def _train(tmp_path, name, resume=False, **train_kw):
    from transmamba.recipes.lm import TextData, train

    ids = (np.arange(3000) % V).astype(np.uint16)
    data = TextData(ids, ids[:400].copy(), V, "cyclic")
    tr = {"tokens": 9 * 64, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1,
          "log_every": 1, "eval_every": 3, "eval_batches": 1, "ckpt_every": 3, "keep_checkpoints": 0,
          "progress": False, **train_kw}
    cfg = {"name": name, "out_dir": str(tmp_path / name), "device": "cpu", "seed": 1,
           "model": {"vocab_size": "auto", "d_model": 8, "n_layers": 1}, "train": tr}
    return train(cfg, data=data, model_fn=TinyLM, resume=resume)


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_resume_skips_corrupt_newest_and_continues_exactly(tmp_path, capsys):
    from transmamba.training.metrics import read_metrics

    full = _train(tmp_path, "full")
    part = _train(tmp_path, "part", halt_at_step=6)
    root = tmp_path / "part" / "checkpoints"
    assert [s for s, _ in ck.list_checkpoints(root)] == [3, 6]
    _flip_middle_byte(root / ck.step_dir_name(6) / ck.MODEL_FILE)
    capsys.readouterr()
    with pytest.warns(ck.CheckpointSkippedWarning, match=r"step_0000006.*model\.safetensors"):
        resumed = _train(tmp_path, "part", resume=True)
    assert f"resumed from {root / ck.step_dir_name(3)} at step 3" in capsys.readouterr().err
    assert part["step"] == 6 and resumed["step"] == 9
    # redoing steps 4-6 from the step-3 checkpoint gives the uninterrupted run's curve
    key = ("step", "train_loss", "val_loss", "lr")
    rows = [[tuple(r[k] for k in key) for r in read_metrics(tmp_path / n / "metrics.csv")] for n in ("full", "part")]
    assert rows[0] == rows[1] and full["final_val_loss"] == resumed["final_val_loss"]
    assert ck.verify_checkpoint(root / ck.step_dir_name(6))  # rewritten intact by the resumed run


def test_resume_truncated_optimizer_falls_back(tmp_path, capsys):
    _train(tmp_path, "run", halt_at_step=6)
    root = tmp_path / "run" / "checkpoints"
    opt = root / ck.step_dir_name(6) / ck.OPTIM_FILE
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.warns(ck.CheckpointSkippedWarning, match=r"optimizer\.pt has 100 bytes"):
        assert _train(tmp_path, "run", resume=True)["step"] == 9
    assert f"resumed from {root / ck.step_dir_name(3)}" in capsys.readouterr().err


def test_resume_with_only_a_corrupt_checkpoint_is_an_error(tmp_path):
    _train(tmp_path, "run", halt_at_step=3)
    _flip_middle_byte(tmp_path / "run" / "checkpoints" / ck.step_dir_name(3) / ck.MODEL_FILE)
    with pytest.raises(ck.CheckpointCorruptError, match=r"no intact checkpoint.*step_0000003.*model\.safetensors"):
        _train(tmp_path, "run", resume=True)  # never a silent restart from scratch over a damaged run
