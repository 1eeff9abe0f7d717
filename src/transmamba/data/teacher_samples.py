"""A teacher-samples corpus on disk (written by `teachers/sample.py`, `transmamba teacher sample`).

A directory with `manifest.json` (format, teacher name and weight hash, tokenizer key, the
sampling settings, and `shards`: [{index, file, samples, tokens, sha1}]) and one JSON-lines file
per shard, one sample per line: {"text", "prompt", "n_tokens"}. `data/sources.py` reads it as the
`teacher_samples` source kind, one document per sample, in shard order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of the corpus in `out`, None when there is none (ValueError when it is unreadable)."""
    p = Path(out) / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable teacher-samples manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("shards"), list):
        raise ValueError(f"{p}: not a teacher-samples manifest of format {FORMAT}")
    return m


def corpus_documents(path: str | os.PathLike):
    """(where, text) of every sample of a corpus, in shard order (ValueError naming a bad shard or line)."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path}: no {MANIFEST} (make one with `transmamba teacher sample --out {path}`)")
    for sh in manifest["shards"]:
        p = path / sh["file"]
        if not p.is_file():
            raise FileNotFoundError(f"{p}: shard listed in {path / MANIFEST} is missing")
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ValueError(f"{p}:{lineno}: a sample needs a string 'text'")
            yield f"{p}:{lineno}", rec["text"]


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The manifest and shard files of a corpus (what its content hash covers)."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path}: no {MANIFEST} (make one with `transmamba teacher sample --out {path}`)")
    return [path / sh["file"] for sh in manifest["shards"]]
