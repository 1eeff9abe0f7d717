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

from transmamba.io.files import (atomic_dir, atomic_directory, atomic_write_bytes, owner_alive, publish_dir,
                                 remove_stale_tmp, save_json_atomic, save_safetensors_atomic, tmp_sibling)
from transmamba.io.manifest import read_manifest, verify_manifest, write_manifest
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


def _wait_for(marker: Path, proc) -> None:
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the writer did not start"
        time.sleep(0.05)


def test_atomic_directory_writes_the_manifest_last_and_publishes(tmp_path):
    final = tmp_path / "m"
    with atomic_directory(final, manifest=True) as tmp:
        assert tmp.name.startswith(f".m.tmp-{os.getpid()}-") and not final.exists()
        (tmp / "model.safetensors").write_bytes(b"w")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.json").write_text("{}")
    assert sorted(read_manifest(final)["files"]) == ["model.safetensors", "sub/x.json"]
    assert verify_manifest(final) and [p.name for p in tmp_path.iterdir()] == ["m"]
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(final, replace=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
        raise RuntimeError("boom")
    assert (final / "model.safetensors").read_bytes() == b"w" and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_atomic_directory_kill_9_mid_write_leaves_nothing_under_the_name_and_is_cleaned_next(tmp_path):
    """A real kill -9 of a writer inside `atomic_directory`: no directory under the final name, its
    temporary survives it, and the next writer of that name removes it first."""
    final, marker = tmp_path / "out", tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from transmamba.io.files import atomic_directory

        with atomic_directory({str(final)!r}, manifest=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            Path({str(marker)!r}).write_text("x")
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for(marker, proc)
        orphans = list(tmp_path.glob(".out.tmp-*"))
        assert len(orphans) == 1 and orphans[0].name.startswith(f".out.tmp-{proc.pid}-")
        assert remove_stale_tmp(final) == [] and orphans[0].exists()  # a live writer's is never touched
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert orphans[0].exists() and not final.exists()
    with atomic_directory(final) as tmp:
        assert not orphans[0].exists()  # cleaned before the new temporary is made
        (tmp / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "writing"]


def test_replace_keeps_the_entries_keep_accepts(tmp_path):
    final = tmp_path / "student"
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"old")
    (final / "tokenizer.json").write_text("old")  # a model file the new one lacks: dropped
    (final / "eval").mkdir()
    (final / "eval" / "report.json").write_text("{}")  # kept
    with atomic_directory(final, replace=True, keep=lambda n: n == "eval", manifest=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in final.iterdir()) == ["checksums.json", "eval", "model.safetensors"]
    assert (final / "model.safetensors").read_bytes() == b"new" and (final / "eval" / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["student"]  # the old one is gone
    with atomic_directory(final, replace=True) as tmp:  # keep=None: nothing carried over
        (tmp / "a").write_text("1")
    assert [p.name for p in final.iterdir()] == ["a"]


def test_a_directory_moved_aside_by_a_dead_writer_is_put_back(tmp_path):
    """Killed between moving the old directory aside and renaming the new one in: the next start
    puts the old one back; killed after, it carries over what the old one still held."""
    final = tmp_path / "run"
    pid = _dead_pid()
    old = tmp_path / f".run.old-{pid}-0badc0de"
    old.mkdir()
    (old / "metrics.csv").write_text("rows")
    new = _stale(final, pid)
    assert sorted(remove_stale_tmp(final)) == sorted([old, new])
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and (final / "metrics.csv").read_text() == "rows"
    old.mkdir()  # now the new one is in place, the old one still holds metrics.csv and its model files
    (old / "model.safetensors").write_bytes(b"old")
    write_manifest(old)  # lists the old model files: those are not carried over
    (old / "metrics.csv").write_text("rows")  # not listed: it was to be carried over
    (final / "metrics.csv").unlink()
    (final / "model.safetensors").write_bytes(b"new")
    assert remove_stale_tmp(final) == [old] and not old.exists()
    assert (final / "metrics.csv").read_text() == "rows" and (final / "model.safetensors").read_bytes() == b"new"


@pytest.mark.parametrize("kind", ["vit", "vision-student"])
def test_a_model_save_is_atomic_as_a_pair(tmp_path, kind):
    """A crash after the new weights are written but before the new config: the directory still
    holds the old pair (and what else it held), verified by its checksums.json; the next save cleans up."""
    from transmamba.models.vision import StudentConfig, build_student, load_student, save_student
    from transmamba.models.vit import ViT, ViTConfig, save_vit
    from transmamba.models.vit_weights import load_pretrained_vit

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("rows")
    torch.manual_seed(0)
    if kind == "vit":
        make = "ViT(ViTConfig(img_size=8, patch_size=4, d_model=16, depth=1, num_heads=2, d_ff=32, num_classes=3))"
        save, load, imports = save_vit, load_pretrained_vit, "from transmamba.models.vit import ViT, ViTConfig, save_vit as save"
    else:
        make = "build_student(StudentConfig(arch='vim', img_size=8, patch_size=4, d_model=16, depth=1, num_classes=3))"
        save, load = save_student, load_student
        imports = "from transmamba.models.vision import StudentConfig, build_student, save_student as save"
    model = eval(make)
    save(model, out, {"epoch": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = textwrap.dedent(f"""
        import json, os, torch
        {imports}
        torch.manual_seed(1)
        model = {make}
        json.dumps = lambda *a, **k: os._exit(9)  # killed after model.safetensors, before config.json
        save(model, {str(out)!r}, {{"epoch": 2}})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old pair, untouched
    assert verify_manifest(out) and json.loads((out / "config.json").read_text())["epoch"] == 1
    again = load(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(list(tmp_path.glob(".run.tmp-*"))) == 1  # the dead writer's temporary ...
    save(model, out, {"epoch": 3})
    assert not list(tmp_path.glob(".run.*"))  # ... removed by the next save
    assert json.loads((out / "config.json").read_text())["epoch"] == 3 and (out / "metrics.csv").read_text() == "rows"

