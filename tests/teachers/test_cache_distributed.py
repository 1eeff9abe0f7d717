"""The teacher cache built by 2 torchrun ranks on gloo (teachers/cache.py), with no process group up
(it starts and ends its own) and through one: each rank computes only its own batches of windows, the cache is byte-identical to the 1-process build, every rank reads it
whole, and a non-finite teacher output on one rank is refused on every rank with nothing published."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cache_build_script.py")


def _launch(nproc: int, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), str(out)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=SCRIPT.parent)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    base = tmp_path_factory.mktemp("tcdist")
    _launch(1, base / "one")
    _launch(2, base / "two")
    return base / "one", base / "two"


def test_two_ranks_build_their_own_windows_of_a_byte_identical_cache(builds):
    one, two = builds
    files = sorted(p.name for p in (one / "cache").iterdir())
    assert "meta.json" in files and "hidden_2.npy" in files
    assert sorted(p.name for p in (two / "cache").iterdir()) == files
    for name in files:
        assert (one / "cache" / name).read_bytes() == (two / "cache" / name).read_bytes(), name
    a, r0, r1 = (json.loads((d / f"rank{r}.json").read_text()) for d, r in ((one, 0), (two, 0), (two, 1)))
    assert a["distinct_firsts"] == a["n"] == 10
    assert a["windows"] == list(range(10))
    assert r0["windows"] == [0, 1, 2, 6, 7, 8] and r1["windows"] == [3, 4, 5, 9]  # batches of 3, round robin
    assert r0["sha1"] == r1["sha1"] == a["sha1"]  # every rank reads the whole cache
    assert not r0["group_after_first"] and not r1["group_after_first"]  # its own group is gone


def test_a_non_finite_window_on_one_rank_is_refused_on_every_rank(builds):
    one, two = builds
    assert "hidden_states[1] is not finite" in json.loads((one / "rank0.json").read_text())["nan_error"]
    r0, r1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r1["nan_error"].startswith("hidden_states[1] is not finite") and "windows 3..5" in r1["nan_error"]
    assert r0["nan_error"] == f"rank 1: {r1['nan_error']}"
    assert sorted(p.name for p in two.iterdir()) == ["cache", "rank0.json", "rank1.json"]  # no nan/, no temporary
