"""The output-directory lock (transmamba.training.run_lock)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from transmamba.errors import UserError
from transmamba.training.run_lock import LOCK_NAME, RunLock, RunLockedError, StaleRunLockWarning, read_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from transmamba.training.run_lock import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A real second process holding the lock on tmp_path/run (killed with SIGKILL at the end)."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    if line.strip() != "locked":
        p.kill()
        pytest.fail(f"holder did not start: {line!r} {p.stderr.read()}")
    yield out, p
    if p.poll() is None:
        p.kill()
        p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(out, **rec):
    out.mkdir(parents=True, exist_ok=True)
    base = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00",
            "started_unix": 1.0e9, "token": "t"}
    (out / LOCK_NAME).write_text(json.dumps({**base, **rec}))


def test_live_holder_refused_naming_pid_and_dir(holder):
    out, p = holder
    assert read_lock(out)["pid"] == p.pid
    with pytest.raises(RunLockedError) as e:
        RunLock(out).acquire()
    msg = str(e.value)
    assert f"pid {p.pid}" in msg and str(out) in msg and socket.gethostname() in msg
    assert e.value.holder["pid"] == p.pid
    assert isinstance(e.value, UserError) and isinstance(e.value, RuntimeError)
    assert read_lock(out)["pid"] == p.pid  # the holder's lock is untouched


def test_killed_holder_is_taken_over(holder):
    out, p = holder
    p.send_signal(signal.SIGKILL)  # dies without releasing: the lock file stays
    p.wait()
    assert read_lock(out)["pid"] == p.pid
    with pytest.warns(StaleRunLockWarning, match=rf"pid {p.pid} .*no longer running"):
        with RunLock(out) as lock:
            assert lock.held and read_lock(out)["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_dead_pid_taken_over_and_released(tmp_path):
    out = tmp_path / "run"
    pid = _dead_pid()
    _write_lock(out, pid=pid)
    with pytest.warns(StaleRunLockWarning, match=f"pid {pid}"):
        lock = RunLock(out).acquire()
    rec = read_lock(out)
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["token"] != "t"
    lock.release()
    assert not (out / LOCK_NAME).exists()
    assert sorted(p.name for p in out.iterdir()) == []  # no temporaries left behind


def test_lock_from_another_host_is_refused_not_taken(tmp_path):
    out = tmp_path / "run"
    _write_lock(out, pid=_dead_pid(), host="gpu-node-7")
    with pytest.raises(RunLockedError, match=r"gpu-node-7.*cannot tell.*delete .*\.lock"):
        RunLock(out).acquire()
    assert read_lock(out)["host"] == "gpu-node-7"


def test_released_on_exception_and_reusable(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with RunLock(out):
            assert (out / LOCK_NAME).exists()
            1 / 0
    assert not (out / LOCK_NAME).exists()
    with RunLock(out):  # free again
        pass


def test_same_process_second_lock_refused(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunLockedError, match=r"\(this process\)"):
            RunLock(out).acquire()
    # a lock with this pid that this process did not write is an earlier process's (pid reused)
    _write_lock(out, token="someone-else")
    with pytest.warns(StaleRunLockWarning):
        with RunLock(out):
            pass


def test_disabled_lock_is_a_no_op(tmp_path, holder):
    out, _ = holder
    with RunLock(out, enabled=False) as lock:  # a non-main rank of a multi-process run
        assert not lock.held
    assert read_lock(out) is not None  # the holder's lock stays
    with RunLock(tmp_path / "other", enabled=False):
        pass
    assert not (tmp_path / "other").exists()


def test_unreadable_lock_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("{not json")
    with pytest.raises(RunLockedError, match=r"cannot be read.*delete"):
        RunLock(out).acquire()
