"""train.parallel fsdp (training/fsdp.py) under `torchrun --nproc_per_node 2` on gloo: FSDP2 shards
the tiny LM of ddp_lm_script.py, gives the 1-process losses, holds half the parameter + gradient +
AdamW bytes per rank, resumes bit-exactly from its sharded checkpoints (with activation
checkpointing on, which must not change a loss), and resumes DDP checkpoints (and the reverse)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transmamba.io import checkpoint as ck
from transmamba.training.metrics import read_metrics

SCRIPT = Path(__file__).with_name("fsdp_lm_script.py")
KEY = ("step", "tokens", "train_loss", "val_loss", "lr", "grad_norm")


def _launch(nproc: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert r.returncode == 0, r.stderr[-3000:]


def _fit(out: Path, rank: int = 0) -> dict:
    return json.loads((out / f"fit_rank{rank}.json").read_text())


def _rows(out: Path):
    return [tuple(r[k] for k in KEY) for r in read_metrics(out / "metrics.csv")]


def _close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra[:2] == rb[:2] and ra[4] == rb[4]  # step, tokens, lr
        for x, y in zip(ra[2:], rb[2:]):
            assert (x is None and y is None) or x == pytest.approx(y, rel=tol, abs=tol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """6 steps of FSDP on 1 process (a world of one) and on 2 processes."""
    base = tmp_path_factory.mktemp("fsdp")
    one, two = base / "one", base / "two"
    _launch(1, str(one), "6", "--parallel", "fsdp")
    _launch(2, str(two), "6", "--parallel", "fsdp")
    return one, two


def test_two_fsdp_processes_match_one_with_half_the_bytes_per_rank(runs):
    one, two = runs
    a, b = _fit(one), _fit(two)
    assert a["parallel"] == b["parallel"] == "fsdp" and a["processes"] == 1 and b["processes"] == 2
    assert len(a["losses"]) == 6
    assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) <= 1e-5
    _close(_rows(one), _rows(two))
    full = a["state_bytes"]
    assert full["total"] > 0 and full["optimizer"] == 2 * full["params"]  # fp32 params, AdamW's two moments
    for r in (0, 1):  # measured from each rank's local shards
        assert _fit(two, r)["state_bytes"]["total"] <= 0.55 * full["total"]
    # the sharded checkpoint: dcp/ shards listed in the manifest; the final student whole on rank 0
    last = ck.latest_checkpoint(two / "checkpoints")
    assert (last / "dcp").is_dir() and not (last / ck.MODEL_FILE).exists()
    assert any(n.startswith("dcp/") for n in ck.read_manifest(last)["files"])
    from safetensors.torch import load_file

    sa, sb = (load_file(str(next((d / "student").glob("*.safetensors")))) for d in (one, two))
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 4 torchrun launches in all (~50 s on 2 busy cores)
def test_fsdp_resume_is_bit_exact_with_activation_checkpointing(runs, tmp_path):
    _, two = runs
    part = tmp_path / "part"
    _launch(2, str(part), "6", "3", "--parallel", "fsdp", "--ac")  # halted after step 3
    assert [s for s, _ in ck.list_checkpoints(part / "checkpoints")] == [2, 3]
    _launch(2, str(part), "6", "--resume", "--parallel", "fsdp", "--ac")
    assert _rows(part) == _rows(two)  # activation checkpointing changes no loss; the resume is exact
    assert not (part / ".lock").exists()


def test_sharded_checkpoint_corruption_is_named(runs, tmp_path):
    _, two = runs
    bad = tmp_path / "bad"
    shutil.copytree(ck.latest_checkpoint(two / "checkpoints"), bad)
    shard = next((bad / "dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointCorruptError, match="dcp/"):
        ck.verify_checkpoint(bad)


@pytest.mark.slow
def test_ddp_checkpoint_resumes_under_fsdp_and_back(runs, tmp_path):
    one, _ = runs
    a = tmp_path / "ddp_then_fsdp"
    _launch(1, str(a), "6", "3", "--parallel", "ddp")
    _launch(2, str(a), "6", "--resume", "--parallel", "fsdp")
    _close(_rows(a), _rows(one))
    b = tmp_path / "fsdp_then_ddp"
    _launch(2, str(b), "6", "3", "--parallel", "fsdp")
    _launch(1, str(b), "6", "--resume", "--parallel", "ddp")
    _close(_rows(b), _rows(one))
