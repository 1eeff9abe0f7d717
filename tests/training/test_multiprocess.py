"""The engine under `torchrun --nproc_per_node 2` (gloo on CPU): the same global batch and seed give
the same per-step losses as one process, and a 2-process run resumes exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from transmamba.io import checkpoint as ck
from transmamba.training.metrics import read_metrics

SCRIPT = Path(__file__).with_name("ddp_lm_script.py")
KEY = ("step", "tokens", "train_loss", "val_loss", "lr", "grad_norm")


def _launch(nproc: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _rows(out: Path):
    return [tuple(r[k] for k in KEY) for r in read_metrics(out / "metrics.csv")]


def test_two_processes_match_one_and_resume_exactly(tmp_path):
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    _launch(1, str(one), "6")
    _launch(2, str(two), "6")
    a, b = _rows(one), _rows(two)
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert ra[:2] == rb[:2] and ra[4] == rb[4]  # step, tokens, lr
        for x, y in zip(ra[2:], rb[2:]):
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-5, abs=1e-5)
    _launch(2, str(part), "6", "3")  # halted after step 3 (checkpoint at 2, and at 3 on halt)
    assert [s for s, _ in ck.list_checkpoints(part / "checkpoints")] == [2, 3]
    _launch(2, str(part), "6", "--resume")
    c = _rows(part)
    assert c == b  # bit-identical to the uninterrupted 2-process run
    assert not (part / ".lock").exists()


def test_accelerate_launch_runs_two_processes(tmp_path):
    """`accelerate launch --config_file configs/accelerate/multi_cpu.yaml` starts 2 gloo processes."""
    out = tmp_path / "acc"
    cfg = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "multi_cpu.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), str(SCRIPT),
                        str(out), "3"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stderr
    assert len(_rows(out)) == 3


def test_main_process_choice_is_rank_0s_on_every_rank(tmp_path):
    from transmamba.training.engine import main_process_choice

    assert main_process_choice([3, 4]) == [3, 4]  # no process group: the object itself
    script = Path(__file__).with_name("choice_script.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                        str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [(tmp_path / f"rank{i}.txt").read_text() for i in (0, 1)] == ["[0, 10]", "[0, 10]"]
