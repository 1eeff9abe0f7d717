"""The checksum manifest every saved model directory carries: `checksums.json` (a leaf: stdlib only).

    {"format": 1, "algorithm": "sha256",
     "files": {relative path: {"size": bytes, "sha256": hex}, ...},
     "manifest_sha256": sha256 of the rest (sorted keys, compact JSON), so a damaged manifest is detected}

Written last into a directory (`transmamba.io.files.atomic_directory(..., manifest=True)`), so its
presence means the directory is complete. Every kind of saved model carries one: training
checkpoints (`io/checkpoint.py`), sharded FSDP checkpoints (`training/fsdp.py`), students
(`hf/student.py`), the ViT teacher and the vision students (`models/vit.py`, `models/vision.py`).
`verify_manifest` is the one check for all of them: every listed file has its recorded size and
sha256, and no weights / config / checkpoint file is present that the manifest does not cover
(added after it was written). A directory written before manifests existed has none: False,
nothing checked (the caller decides whether to warn).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_FILE = "checksums.json"
HASH = "sha256"
_CHUNK = 1 << 20
# files that decide what a loaded model computes or a run resumes from: a manifest must cover each one present
COVERED_FILES = ("model.safetensors", "optimizer.pt", "config.json", "state.json", "generation_config.json",
                 "model.safetensors.index.json")


class CheckpointCorruptError(ValueError):
    """A checkpoint file is truncated, altered or unreadable; `.checkpoint` and `.file` name it."""

    def __init__(self, message: str, *, checkpoint: str | os.PathLike | None = None, file: str | None = None):
        super().__init__(message)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.file = file


def corrupt(dir: Path, file: str, problem: str) -> CheckpointCorruptError:
    """CheckpointCorruptError "checkpoint {dir} is corrupt: {file} {problem}"."""
    return CheckpointCorruptError(f"checkpoint {dir} is corrupt: {file} {problem}", checkpoint=dir, file=file)


def file_digest(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _manifest_digest(body: dict) -> str:
    return hashlib.new(HASH, json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(dir: str | os.PathLike, names: list[str] | None = None) -> None:
    """Write checksums.json (fsync'd) for the files `names` of `dir` (default: every file under it,
    as sorted relative paths), what `verify_manifest` checks."""
    dir = Path(dir)
    if names is None:
        names = sorted(str(p.relative_to(dir)) for p in dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    files = {n: {"size": (dir / n).stat().st_size, HASH: file_digest(dir / n)} for n in names}
    body = {"format": 1, "algorithm": HASH, "files": files}
    with open(dir / MANIFEST_FILE, "w") as f:
        f.write(json.dumps({**body, "manifest_sha256": _manifest_digest(body)}, indent=1))
        f.flush()
        os.fsync(f.fileno())


def read_manifest(dir: str | os.PathLike) -> dict | None:
    """checksums.json, checked against its own digest; None for a directory written before checksums."""
    dir = Path(dir)
    path = dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(dir, MANIFEST_FILE, f"is not valid JSON ({e})") from None
    ok = (isinstance(data, dict) and isinstance(data.get("files"), dict)
          and all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get(HASH), str)
                  for v in data["files"].values()))
    if not ok:
        raise corrupt(dir, MANIFEST_FILE, "does not have the layout {files: {name: {size, sha256}}}")
    if data.get("algorithm") != HASH:
        raise corrupt(dir, MANIFEST_FILE, f"names the hash {data.get('algorithm')!r}, expected {HASH!r}")
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    if data.get("manifest_sha256") != _manifest_digest(body):
        raise corrupt(dir, MANIFEST_FILE, "does not match its own checksum (manifest_sha256): it was altered")
    return data


def verify_manifest(dir: str | os.PathLike, files: list[str] | tuple[str, ...] | None = None) -> bool:
    """Check `files` (default: every file checksums.json lists) of a saved model directory.

    True when verified; False when `dir` has no checksums.json (written before checksums: nothing
    checked). Raises CheckpointCorruptError naming the directory and the file on a size or checksum
    mismatch (truncation, bit flip), a damaged checksums.json, or a weights / config / checkpoint
    file present that it does not cover; FileNotFoundError when a listed file is gone. A requested
    file that was never saved (e.g. optimizer.pt of a model-only checkpoint) is left to the caller.
    """
    dir = Path(dir)
    manifest = read_manifest(dir)
    if manifest is None:
        return False
    listed = manifest["files"]
    for p in sorted(dir.iterdir()):
        if (p.is_file() and p.name not in listed
                and (p.name in COVERED_FILES or p.name.endswith(".safetensors"))):
            raise corrupt(dir, p.name, f"is not covered by {MANIFEST_FILE} (added after it was written)")
    for name in listed if files is None else files:
        if name not in listed:
            continue
        path = dir / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {dir} is missing {name} (listed in {MANIFEST_FILE})")
        want = listed[name]
        size = path.stat().st_size
        if size != want["size"]:
            raise corrupt(dir, name, f"has {size} bytes where {MANIFEST_FILE} records {want['size']} "
                                     f"({'truncated' if size < want['size'] else 'grown'} after it was written)")
        got = file_digest(path)
        if got != want[HASH]:
            raise corrupt(dir, name, f"does not match its {HASH} checksum (recorded {want[HASH][:12]}..., "
                                     f"found {got[:12]}...): its content changed after it was written")
    return True
