"""One run per output directory: `RunLock(out_dir)` holds `<out_dir>/.lock` while a run writes there.

    with RunLock(out_dir, enabled=is_main_process):
        ...  # train, write checkpoints and metrics

Acquiring creates `.lock` atomically (a fully written temporary hard-linked onto the name, which
fails if it exists; O_CREAT|O_EXCL where hard links are unsupported) holding the holder's pid,
host, start time and a random token. A second run on the same directory meets it and raises
`RunLockedError` at once, naming the holder's pid, host and start time and the directory. A lock
left by a process that is gone (no such pid on this host, or the pid now belongs to a process
started after the lock was written) is taken over with a `StaleRunLockWarning`. A lock written on
another host is never taken over, since this host cannot tell whether that process still runs:
the error names the host and says to delete the file if that run is over. The lock is removed on
exit, also when the body raises. In a multi-process run only rank 0 takes it (`enabled=False`
elsewhere makes the lock a no-op).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

from transmamba.errors import UserError
from transmamba.io.files import owner_alive

LOCK_NAME = ".lock"
_HELD: set[str] = set()  # tokens of the locks this process holds now


class RunLockedError(UserError, RuntimeError):
    """The output directory is held by another run; `.holder` is its lock record (or None)."""

    def __init__(self, message: str, *, lock_path: str | os.PathLike | None = None, holder: dict | None = None):
        super().__init__(message)
        self.lock_path = None if lock_path is None else Path(lock_path)
        self.holder = holder


class StaleRunLockWarning(UserWarning):
    """A lock left by a process that no longer runs was taken over."""


def _parse(raw: bytes, path: Path) -> dict:
    try:
        rec = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a lock record ({e})") from None
    if not (isinstance(rec, dict) and isinstance(rec.get("pid"), int) and isinstance(rec.get("host"), str)):
        raise ValueError(f"{path} is not a lock record (it needs an integer pid and a host)")
    return rec


def read_lock(out_dir: str | os.PathLike) -> dict | None:
    """The lock record of `out_dir` ({"pid", "host", "started", "token", ...}), None if unlocked.

    Raises ValueError if the file exists but does not hold a lock record.
    """
    path = Path(out_dir) / LOCK_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return _parse(raw, path)


def _describe(rec: dict) -> str:
    started = rec.get("started")
    since = f" since {started}" if isinstance(started, str) else ""
    return f"pid {rec['pid']} on host {rec['host']}{since}"


class RunLock:
    """Exclusive use of an output directory by one run (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.enabled = bool(enabled)
        self.held = False
        self.record: dict | None = None

    # ---------------------------------------------------------------------------------- acquire
    def acquire(self) -> "RunLock":
        if not self.enabled:
            return self
        if self.held:
            raise RuntimeError(f"RunLock on {self.out_dir} is already held by this object")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                  "started_unix": started, "token": uuid.uuid4().hex}
        data = json.dumps(record).encode()
        for _ in range(5):  # a retry only after taking over a stale lock, or losing a race for it
            if self._create(data):
                self.held, self.record = True, record
                _HELD.add(record["token"])
                return self
            self._take_over_if_stale()
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep taking it",
                             lock_path=self.path)

    def _create(self, data: bytes) -> bool:
        """Create the lock file holding `data` atomically; False if it already exists."""
        tmp = self.out_dir / f"{LOCK_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            try:
                os.link(tmp, self.path)  # atomic, and readers never see a half-written record
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
            try:  # no hard links on this filesystem
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        """Remove the existing lock if its holder is gone; otherwise raise RunLockedError."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            rec = _parse(raw, self.path)
        except ValueError as e:
            raise RunLockedError(f"{self.out_dir} is locked by {self.path}, which cannot be read ({e}); "
                                 f"if no run is using {self.out_dir}, delete {self.path}", lock_path=self.path) from None
        if rec["host"] != socket.gethostname():
            raise RunLockedError(
                f"{self.out_dir} is in use by another run: {_describe(rec)} holds {self.path}. This host "
                f"({socket.gethostname()}) cannot tell whether that process still runs; if that run is over, "
                f"delete {self.path}", lock_path=self.path, holder=rec)
        written = rec.get("started_unix") if isinstance(rec.get("started_unix"), (int, float)) else None
        if rec["pid"] == os.getpid():  # ours only if this process wrote it; else an earlier one with our pid
            alive = rec.get("token") in _HELD
        else:
            alive = owner_alive(rec["pid"], written)
        if alive:
            same = " (this process)" if rec["pid"] == os.getpid() else ""
            raise RunLockedError(f"{self.out_dir} is in use by another run: {_describe(rec)}{same} holds "
                                 f"{self.path}; wait for it to finish or choose another --out_dir",
                                 lock_path=self.path, holder=rec)
        # stale: move it aside (atomic), and make sure what we moved is the record we judged
        aside = self.out_dir / f"{LOCK_NAME}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else took it over first: try again
        try:
            if aside.read_bytes() != raw:  # lost a race: it was replaced by a live lock; put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                return
        finally:
            aside.unlink(missing_ok=True)
        warnings.warn(f"taking over the stale lock of {self.out_dir}: {_describe(rec)} is no longer running",
                      StaleRunLockWarning, stacklevel=4)

    # ---------------------------------------------------------------------------------- release
    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.discard(self.record["token"])
        try:
            rec = read_lock(self.out_dir)
        except ValueError:
            rec = None
        if rec is None or rec.get("token") != self.record["token"]:
            warnings.warn(f"the lock {self.path} was removed or replaced while this run held it; "
                          f"leaving the file as it is", RuntimeWarning, stacklevel=3)
            return
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.out_dir)!r}, enabled={self.enabled}, held={self.held})"
