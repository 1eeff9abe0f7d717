"""transmamba.io.files: atomic files and directories, and no orphaned temporaries after a kill -9."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transmamba.io.files import (atomic_dir, atomic_write_bytes, owner_alive, publish_dir, remove_stale_tmp,
                                 save_json_atomic, save_safetensors_atomic, tmp_sibling)
from transmamba.teachers import load as teacher_load


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stale(final: Path, pid: int, tag: str = "0badc0de", big: bool = False) -> Path:
    d = final.parent / f".{final.name}.tmp-{pid}-{tag}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\0" * (1 << 16 if big else 8))
    return d


def test_atomic_files_and_directories(tmp_path):
    save_json_atomic({"a": 1}, tmp_path / "x" / "c.json")
    assert json.loads((tmp_path / "x" / "c.json").read_text()) == {"a": 1}
    save_safetensors_atomic({"w": torch.ones(2, requires_grad=True)}, tmp_path / "x" / "m.safetensors")
    assert load_file(str(tmp_path / "x" / "m.safetensors"))["w"].tolist() == [1.0, 1.0]
    atomic_write_bytes(tmp_path / "x" / "b.bin", b"abc")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["b.bin", "c.json", "m.safetensors"]
    tmp = atomic_dir(tmp_path / "d")
    assert tmp.name.startswith(f".d.tmp-{os.getpid()}-")
    (tmp / "f").write_text("1")
    assert publish_dir(tmp, tmp_path / "d") == tmp_path / "d" and (tmp_path / "d" / "f").read_text() == "1"
    tmp2 = atomic_dir(tmp_path / "d")  # another process published first: theirs is kept
    (tmp2 / "f").write_text("2")
    publish_dir(tmp2, tmp_path / "d")
    assert (tmp_path / "d" / "f").read_text() == "1" and not tmp2.exists()


def test_a_failed_write_leaves_no_temporary(tmp_path):
    with pytest.raises(TypeError):
        save_json_atomic({"x": object()}, tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    final = tmp_path / "smollm2"
    dead = _stale(final, _dead_pid())
    mine = _stale(final, os.getpid(), "11111111")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = _stale(final, child.pid, "22222222")
        other = _stale(tmp_path / "other", _dead_pid())  # another target's temporary
        odd = tmp_path / ".smollm2.tmp-notapid"
        odd.mkdir()
        stale_file = tmp_path / f".smollm2.tmp-{_dead_pid()}-33333333"
        stale_file.write_bytes(b"x")
        removed = remove_stale_tmp(final)
        assert sorted(removed) == sorted([dead, stale_file])
        assert not dead.exists() and not stale_file.exists()
        assert mine.exists() and live.exists() and other.exists() and odd.exists()
    finally:
        child.kill()
        child.wait()


def test_a_reused_pid_does_not_keep_an_old_temporary(tmp_path):
    """The pid of the dead writer now belongs to a process that started after the temporary was
    last written: the temporary is stale. One written after that process started is kept."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        old = _stale(tmp_path / "t", child.pid, "44444444")
        hour_ago = time.time() - 3600
        os.utime(old, (hour_ago, hour_ago))
        assert not owner_alive(child.pid, hour_ago)
        assert owner_alive(child.pid, time.time())
        assert remove_stale_tmp(tmp_path / "t") == [old]
        fresh = _stale(tmp_path / "t", child.pid, "55555555")
        assert remove_stale_tmp(tmp_path / "t") == [] and fresh.exists()
    finally:
        child.kill()
        child.wait()


class _FakeModel:
    def save_pretrained(self, d, safe_serialization=True):
        (Path(d) / "config.json").write_text("{}")
        (Path(d) / "model.safetensors").write_bytes(b"weights")


class _FakeTok:
    def save_pretrained(self, d):
        (Path(d) / "tokenizer.json").write_text("{}")


def test_prepare_smollm2_cleans_a_stale_temporary_first(tmp_path, monkeypatch):
    """No dequantization: the GGUF loader is replaced by a fake that writes the same files."""
    monkeypatch.setattr(teacher_load, "load_smollm2_gguf", lambda: (_FakeModel(), _FakeTok()))
    final = tmp_path / "teachers" / "smollm2"
    stale = _stale(final, _dead_pid(), big=True)
    assert teacher_load.prepare_smollm2(final) == final
    assert (final / "model.safetensors").read_bytes() == b"weights"
    assert not stale.exists() and [p.name for p in final.parent.iterdir()] == ["smollm2"]
    stale = _stale(final, _dead_pid())  # the cache already exists: still cleaned on the next start
    assert teacher_load.prepare_smollm2(final) == final and not stale.exists()


def test_kill_9_mid_preparation_leaves_no_orphan_after_the_next_start(tmp_path, monkeypatch):
    """A real kill -9 of a process in the middle of writing the cache: its temporary survives it,
    and the next `prepare_smollm2` (here with the fake loader) removes it."""
    final, marker = tmp_path / "smollm2", tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from transmamba.teachers import load as teacher_load

        class Model:
            def save_pretrained(self, d, safe_serialization=True):
                (Path(d) / "model.safetensors").write_bytes(b"half")
                Path({str(marker)!r}).write_text("x")
                time.sleep(60)

        teacher_load.load_smollm2_gguf = lambda: (Model(), None)
        teacher_load.prepare_smollm2({str(final)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "the preparation did not start"
            time.sleep(0.05)
        orphans = list(tmp_path.glob(".smollm2.tmp-*"))
        assert len(orphans) == 1 and orphans[0].name.startswith(f".smollm2.tmp-{proc.pid}-")
        # while the writer lives, nobody touches its temporary
        assert remove_stale_tmp(final) == [] and orphans[0].exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert orphans[0].exists() and not final.exists()  # the orphan kill -9 leaves behind
    monkeypatch.setattr(teacher_load, "load_smollm2_gguf", lambda: (_FakeModel(), _FakeTok()))
    assert teacher_load.prepare_smollm2(final) == final
    assert not list(tmp_path.glob(".smollm2.tmp-*"))


def test_tmp_sibling_names_carry_the_pid(tmp_path):
    a, b = tmp_sibling(tmp_path / "x.json"), tmp_sibling(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path and a.name.startswith(f".x.json.tmp-{os.getpid()}-")
