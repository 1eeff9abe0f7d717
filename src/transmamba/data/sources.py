"""Token streams from the user's own data: several sources, mixed by weight, each split by whole document.

A source is a small dict; a mixture is a list of them. Every source takes an optional `weight`
(a number > 0, default 1: its share of the mixed stream's tokens) and `heldout` (the fraction of
its documents held out for evaluation, in [0, 1], default 0.1; 0 = training only, 1 = evaluation
only):

- `{"name": "shakespeare"}`: `data/text.py`'s corpus, split exactly as `token_ids` splits it
  (`VAL_WORKS` held out; `heldout` is refused). Alone, its stream IS `token_ids(split, tok)`.
- `{"files": "data/*.txt"}`: UTF-8 text files by glob (sorted), one document per file.
- `{"jsonl": "x.jsonl", "field": "text"}`: JSON lines (path or glob), one document per record.
- `{"parquet": "x.parquet", "field": "text"}`: parquet files (path or glob), one document per row.
- `{"hf_disk": "dir", "field": "text"}`: a `datasets` `save_to_disk` directory (`load_from_disk`);
  a DatasetDict needs `"split"` unless it holds one split.
- `{"dataset": "json" | "parquet", "data_files": "x/*.jsonl", "field": "text"}`:
  `datasets.load_dataset(builder, data_files=...)` offline (`"split"`, default "train"), cached
  under `cache_dir/hf-datasets`.
- `{"teacher_samples": "dir"}`: a corpus the teacher wrote (`transmamba teacher sample --out dir`,
  `data/teacher_samples.py`), one document per sample, in shard order.
- `{"retrieval": "facts", "documents": 400, "min_tokens": 256, "max_tokens": 900, "seed": 0}`:
  synthetic retrieval documents (`data/retrieval_docs.py`: facts hidden in Shakespeare's training
  works, asked for and answered at the end), so that long distillation windows show the teacher
  retrieving; `weight` sets their share of the mixture.
- `{"chat": "x.jsonl"}`: JSON lines whose `messages` field (or `"field"`) is a list of
  `{"role", "content"}`, each record rendered with the tokenizer's chat template
  (`tok.apply_chat_template(messages, tokenize=False)`): refused when the tokenizer has none.

Held-out split: a document is held out when sha1 of its text, read as a fraction of 2^64 (its
first 8 bytes), is below `heldout`. The choice depends on the document alone: adding files or
records never moves an existing document between splits, and identical documents always fall
in the same split, so no text is in both. Records whose text is empty are skipped (a dataset's
blank rows); an empty file, a source without any document, or a split with no document where
`heldout` asks for some are refused.

Tokenization (`encode`, `document_separator` and `ids_dtype` of `data/text.py`) runs once per
source: its two splits are cached as `cache_dir/src-<key>-<split>.npy` (documents joined by the
separator) with `-starts.npy` (where each document begins), the key a hash of the source's
content (every byte of its files), its settings, the tokenizer (`tokenizer_key`) and, for chat,
the chat template. A changed file changes the key. The mixed stream of several sources (or with
`n_tokens`) is cached too (`mix-<key>-<split>.npy`); all are returned memory-mapped, read-only.

Mixing (`mixture_ids`): pieces of documents, the next one always from the source with the fewest
tokens emitted per unit of weight (ties to the earlier source), so the token shares follow the
weights up to one piece, deterministically. A piece is a whole document, or MIX_PIECE tokens of a
longer one (its consecutive pieces keep their order; a separator goes between any two pieces): a
Shakespeare work is ~30-60k tokens, and mixing whole works against 200-token samples gave a "50:50"
stream that was 68:32. The held-out split is still decided per whole document. Without `n_tokens` the
stream ends when the source whose turn it is has no document left (no document repeats; one source gives
all of its documents in order). With `n_tokens` it is cut at exactly n_tokens and a source that runs out
starts over from its first document (its documents repeat).

Bad data is refused with the file and record named (ValueError / FileNotFoundError, which the
CLI prints as `error: ...`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import heapq
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transmamba.data.text import (document_separator, encode, ids_dtype, join_documents, load_tokenizer, save_ids,
                                  token_ids, tokenizer_key)
from transmamba.data.retrieval_docs import FORMAT as RETRIEVAL_FORMAT, KINDS as RETRIEVAL_KINDS, fact_documents
from transmamba.data.teacher_samples import corpus_documents, corpus_files
from transmamba.io.files import set_hf_offline

KINDS = ("name", "files", "jsonl", "parquet", "hf_disk", "dataset", "chat", "teacher_samples", "retrieval")
NAMES = ("shakespeare",)
SPLITS = ("train", "val")
DEFAULT_HELDOUT = 0.1
_OPTIONS = {"name": (), "files": (), "jsonl": ("field",), "parquet": ("field",), "hf_disk": ("field", "split"),
            "dataset": ("data_files", "field", "split"), "chat": ("field",), "teacher_samples": (), "retrieval": ()}
_INT_OPTIONS = {"retrieval": {"documents": None, "min_tokens": 256, "max_tokens": 900, "seed": 0}}
_REQUIRED = {"jsonl": ("field",), "parquet": ("field",), "hf_disk": ("field",), "dataset": ("data_files", "field")}
_FORMAT = 1  # bump when the cached layout or the split rule changes
_BATCH_CHARS = 4_000_000  # texts tokenized per encode call
MIX_PIECE = 1024  # the longest piece of a document that mixing takes at once
_MIX_FORMAT = 2  # bump when the mixing rule changes (names the mixed streams and the caches built from them)


@dataclass(frozen=True)
class Source:
    """One checked source spec (see the module docstring)."""

    kind: str
    target: str
    field: str | None = None
    split: str | None = None
    data_files: str | None = None
    weight: float = 1.0
    heldout: float = DEFAULT_HELDOUT
    numbers: tuple = ()  # (name, value) of a generated source's integer settings (retrieval)

    @property
    def label(self) -> str:
        """How messages name the source, e.g. "jsonl source 'data/x.jsonl'"."""
        if self.kind == "name":
            return f"source {self.target!r}"
        if self.kind == "dataset":
            return f"dataset source {self.target!r} data_files {self.data_files!r}"
        return f"{self.kind} source {self.target!r}"


# ------------------------------------------------------------------------------------------ specs
def parse_source(spec) -> Source:
    """A `Source` from one spec dict; ValueError naming the spec and what is wrong with it."""
    if not isinstance(spec, dict):
        raise ValueError(f"a data source must be a mapping such as {{'files': 'data/*.txt'}}, got {spec!r}")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        what = "no" if not kinds else f"several ({', '.join(kinds)})"
        raise ValueError(f"data source {spec!r} names {what} source kind; give exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    allowed = {kind, "weight", "heldout", *_OPTIONS[kind], *_INT_OPTIONS.get(kind, {})}
    unknown = sorted(set(spec) - allowed, key=str)
    if unknown:
        raise ValueError(f"data source {spec!r}: unknown key(s) {unknown} for a {kind!r} source "
                         f"(allowed: {sorted(allowed)})")
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in spec]
    if missing:
        raise ValueError(f"data source {spec!r}: a {kind!r} source needs {missing}")
    for k in (kind, *_OPTIONS[kind]):
        if k in spec and not (isinstance(spec[k], str) and spec[k]):
            raise ValueError(f"data source {spec!r}: {k!r} must be a non-empty string, got {spec[k]!r}")
    numbers = _int_options(spec, kind)
    if kind == "name" and spec["name"] not in NAMES:
        raise ValueError(f"data source {spec!r}: unknown source name {spec['name']!r} (known: {', '.join(NAMES)})")
    if kind == "dataset" and spec["dataset"] not in ("json", "parquet"):
        raise ValueError(f"data source {spec!r}: 'dataset' must be 'json' or 'parquet' (a datasets builder "
                         f"that reads local files), got {spec['dataset']!r}")
    if kind == "name" and "heldout" in spec:
        raise ValueError(f"data source {spec!r}: {spec['name']!r} has a fixed split (data/text.py VAL_WORKS); "
                         f"'heldout' does not apply to it")
    weight, heldout = spec.get("weight", 1.0), spec.get("heldout", DEFAULT_HELDOUT)
    if not (_real(weight) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"data source {spec!r}: 'weight' must be a finite number > 0, got {weight!r}")
    if not (_real(heldout) and 0 <= heldout <= 1):
        raise ValueError(f"data source {spec!r}: 'heldout' must be a number in [0, 1], got {heldout!r}")
    field = spec.get("field", "messages" if kind == "chat" else None)
    return Source(kind, spec[kind], field=field, split=spec.get("split"), data_files=spec.get("data_files"),
                  weight=float(weight), heldout=float(heldout), numbers=numbers)


def _int_options(spec: dict, kind: str) -> tuple:
    """The checked integer settings of a generated source, defaults filled in (None = required)."""
    defaults = _INT_OPTIONS.get(kind)
    if not defaults:
        return ()
    if kind == "retrieval" and spec[kind] not in RETRIEVAL_KINDS:
        raise ValueError(f"data source {spec!r}: 'retrieval' must be one of {RETRIEVAL_KINDS}, got {spec[kind]!r}")
    got = {}
    for name, default in defaults.items():
        v = spec.get(name, default)
        if v is None:
            raise ValueError(f"data source {spec!r}: a {kind!r} source needs {name!r} (an integer)")
        if not (isinstance(v, int) and not isinstance(v, bool)) or (name != "seed" and v < 1):
            raise ValueError(f"data source {spec!r}: {name!r} must be an integer{'' if name == 'seed' else ' >= 1'}, "
                             f"got {v!r}")
        got[name] = v
    if kind == "retrieval" and not 64 <= got["min_tokens"] <= got["max_tokens"]:
        raise ValueError(f"data source {spec!r}: need 64 <= 'min_tokens' <= 'max_tokens', got "
                         f"{got['min_tokens']} and {got['max_tokens']}")
    return tuple(got.items())


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_sources(specs, tokenizer=None) -> list[Source]:
    """Check a mixture before any work: each spec (`parse_source`), that each path or glob matches
    something, and, given a tokenizer object, that chat sources can be rendered with it."""
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError(f"data sources must be a non-empty list of source mappings, got {specs!r}")
    sources = [parse_source(s) for s in specs]
    for src in sources:
        if src.kind in ("files", "jsonl", "parquet", "chat"):
            _match(src.target, src.label)
        elif src.kind == "dataset":
            _match(src.data_files, src.label)
        elif src.kind == "hf_disk" and not Path(src.target).is_dir():
            raise FileNotFoundError(f"{src.label}: no such directory {src.target}")
        elif src.kind == "teacher_samples":
            corpus_files(src.target)  # FileNotFoundError / ValueError without a readable manifest
        if src.kind == "chat" and tokenizer is not None and not isinstance(tokenizer, str):
            _check_chat_template(tokenizer, src)
    return sources


def _match(pattern: str, label: str) -> list[Path]:
    files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(pattern), recursive=True))
    files = [p for p in files if p.is_file()]
    if not files:
        raise FileNotFoundError(f"{label}: {pattern!r} matches no file")
    return files


def _check_chat_template(tok, src: Source) -> None:
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(f"{src.label}: the tokenizer ({type(tok).__name__}, {len(tok)} tokens) has no chat template, "
                         f"so chat messages cannot be rendered in the model's own format (use a 'jsonl' source "
                         f"with a text field for plain text)")


# -------------------------------------------------------------------------------------- documents
def _decode(data: bytes, where: str, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text: byte {offset + e.start} ({data[e.start:e.start + 1]!r}) "
                         f"cannot be decoded") from None


def _text_files(src: Source):
    for p in _match(src.target, src.label):
        data = p.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise ValueError(f"{p}: not UTF-8 text: byte {e.start} (line {line}) is "
                             f"{data[e.start:e.start + 1]!r}") from None
        text = text.removeprefix("\ufeff")
        if not text.strip():
            raise ValueError(f"{p}: empty file (a {src.kind} source takes one document per file)")
        yield str(p), text


def _jsonl_records(src: Source):
    for p in _match(src.target, src.label):
        n, offset = 0, 0
        with open(p, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{p}:{lineno}"
                line = _decode(raw, where, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{where}: a JSON {type(rec).__name__} where a record (object) was expected")
                if src.field not in rec:
                    raise ValueError(f"{where}: record has no field {src.field!r} (keys present: {sorted(rec)})")
                n += 1
                yield where, rec[src.field]
        if n == 0:
            raise ValueError(f"{p}: empty file (no JSON records)")


def _parquet_records(src: Source):
    import pyarrow.parquet as pq

    for p in _match(src.target, src.label):
        try:
            names = pq.read_schema(p).names
        except Exception as e:  # pyarrow's own error types: not a parquet file, truncated footer
            raise ValueError(f"{p}: not a readable parquet file ({e})") from None
        if src.field not in names:
            raise ValueError(f"{p}: no column {src.field!r} (columns present: {names})")
        pf = pq.ParquetFile(p)
        if pf.metadata.num_rows == 0:
            raise ValueError(f"{p}: empty file (no rows)")
        i = 0
        for batch in pf.iter_batches(columns=[src.field], batch_size=4096):
            for value in batch.column(0).to_pylist():
                yield f"{p} row {i}", value
                i += 1


def _hf_records(src: Source, cache_dir: Path):
    set_hf_offline()
    import datasets

    if src.kind == "hf_disk":
        ds = datasets.load_from_disk(src.target)
        name = f"{src.target}"
        if isinstance(ds, datasets.DatasetDict):
            if src.split is None and len(ds) != 1:
                raise ValueError(f"{src.label}: the directory holds the splits {sorted(ds)}; name one with 'split'")
            split = src.split if src.split is not None else next(iter(ds))
            if split not in ds:
                raise ValueError(f"{src.label}: no split {split!r} (splits present: {sorted(ds)})")
            ds, name = ds[split], f"{src.target}[{split}]"
    else:
        files = [str(p) for p in _match(src.data_files, src.label)]
        try:
            ds = datasets.load_dataset(src.target, data_files=files, split=src.split or "train",
                                       cache_dir=str(cache_dir / "hf-datasets"))
        except Exception as e:  # datasets' own error types (DatasetGenerationError, ...)
            raise ValueError(f"{src.label}: datasets could not load the files: {type(e).__name__}: {e} "
                             f"(a 'jsonl' or 'parquet' source names the bad record)") from e
        name = f"{src.data_files}"
    if src.field not in ds.column_names:
        raise ValueError(f"{src.label}: no field {src.field!r} (columns present: {ds.column_names})")
    if len(ds) == 0:
        raise ValueError(f"{src.label}: the dataset has no records")
    i = 0
    for batch in ds.select_columns([src.field]).iter(batch_size=4096):
        for value in batch[src.field]:
            yield f"{name} record {i}", value
            i += 1


def _render_chat(tok, where: str, messages) -> str:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}}, got "
                         f"{type(messages).__name__}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            keys = sorted(m) if isinstance(m, dict) else type(m).__name__
            raise ValueError(f"{where}: message {j} must have a string 'role' and 'content' (got {keys})")
    try:
        return tok.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # jinja's errors, e.g. a template that refuses a role order
        raise ValueError(f"{where}: the tokenizer's chat template cannot render these messages: {e}") from None


def documents(src: Source, tok, cache_dir: str | os.PathLike = "cache/text"):
    """(where, text) of each document of a source (not shakespeare), in order; `where` names the
    file and record. Bad data raises ValueError naming it; empty records are skipped."""
    if src.kind == "files":
        yield from _text_files(src)
        return
    if src.kind == "teacher_samples":
        yield from ((w, t) for w, t in corpus_documents(src.target) if t.strip())
        return
    if src.kind == "retrieval":
        o = dict(src.numbers)
        yield from fact_documents(tok, o["documents"], o["min_tokens"], o["max_tokens"], o["seed"])
        return
    if src.kind in ("jsonl", "chat"):
        records = _jsonl_records(src)
    elif src.kind == "parquet":
        records = _parquet_records(src)
    elif src.kind in ("hf_disk", "dataset"):
        records = _hf_records(src, Path(cache_dir))
    else:
        raise ValueError(f"{src.label}: no documents to read for source kind {src.kind!r}")
    if src.kind == "chat":
        _check_chat_template(tok, src)
    for where, value in records:
        if src.kind == "chat":
            value = _render_chat(tok, where, value)
        elif value is None:
            raise ValueError(f"{where}: field {src.field!r} is null")
        elif not isinstance(value, str):
            raise ValueError(f"{where}: field {src.field!r} is a {type(value).__name__}, not a string")
        if value.strip():
            yield where, value


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document falls in the held-out split: sha1(text) as a fraction of 2^64 < fraction."""
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return h < fraction * 2.0 ** 64


# ---------------------------------------------------------------------------------------- caching
def _hash_files(h, paths) -> None:
    for p in paths:
        h.update(f"\0{p}\0".encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def source_key(src: Source, tok) -> str:
    """A short hash of what a source's token streams depend on: every byte of its files, its
    settings, the tokenizer and (chat) the chat template."""
    h = hashlib.sha1(json.dumps({"format": _FORMAT, "kind": src.kind, "field": src.field, "split": src.split,
                                 "builder": src.target if src.kind == "dataset" else None,
                                 "heldout": src.heldout, "tokenizer": tokenizer_key(tok),
                                 "chat_template": getattr(tok, "chat_template", None) if src.kind == "chat" else None,
                                 **({"retrieval": [src.target, list(src.numbers), RETRIEVAL_FORMAT]}
                                    if src.kind == "retrieval" else {})},
                                sort_keys=True).encode())
    if src.kind == "hf_disk":
        root = Path(src.target)
        _hash_files(h, sorted(p for p in root.rglob("*") if p.is_file()))
    elif src.kind == "teacher_samples":
        _hash_files(h, corpus_files(src.target))
    elif src.kind != "retrieval":  # retrieval: generated from the settings above and the pinned Shakespeare works
        _hash_files(h, _match(src.data_files if src.kind == "dataset" else src.target, src.label))
    return h.hexdigest()[:16]


def _paths(cache_dir: Path, key: str, split: str) -> tuple[Path, Path]:
    return cache_dir / f"src-{key}-{split}.npy", cache_dir / f"src-{key}-{split}-starts.npy"


def _build_source(src: Source, tok, cache_dir: Path, key: str) -> None:
    sep, dtype = document_separator(tok), ids_dtype(tok)
    docs = {s: [] for s in SPLITS}
    batch: list[tuple[str, str]] = []

    def flush():
        for (_, text), ids in zip(batch, encode(tok, [t for _, t in batch])):
            docs["val" if is_heldout(text, src.heldout) else "train"].append(np.asarray(ids, dtype))
        batch.clear()

    chars = 0
    for where, text in documents(src, tok, cache_dir):
        batch.append((where, text))
        chars += len(text)
        if chars >= _BATCH_CHARS:
            flush()
            chars = 0
    flush()
    if not docs["train"] and not docs["val"]:
        raise ValueError(f"{src.label}: no documents (every record's {src.field!r} is empty)")
    for split, ds in docs.items():
        stream_path, starts_path = _paths(cache_dir, key, split)
        if ds:
            stream = join_documents(ds, sep, dtype)
            starts = np.concatenate([[0], np.cumsum([len(d) + 1 for d in ds[:-1]])]).astype(np.int64)
        else:
            stream, starts = np.zeros(0, dtype), np.zeros(0, np.int64)
        save_ids(starts_path, starts)
        save_ids(stream_path, stream)


def source_split(src: Source, tokenizer, split: str, cache_dir: str | os.PathLike = "cache/text"):
    """(stream, starts, key) of one split of one source, tokenized once and cached; None when the
    source holds out nothing for this split (heldout 0 for "val", 1 for "train")."""
    cache_dir = Path(cache_dir)
    if src.kind == "name":
        stream = token_ids(split, tokenizer, cache_dir)
        tok = load_tokenizer(tokenizer, cache_dir) if isinstance(tokenizer, str) else tokenizer
        starts = np.concatenate([[0], np.flatnonzero(stream == document_separator(tok)) + 1]).astype(np.int64)
        return stream, starts, f"{src.target}-{tokenizer_key(tok)}"
    if (split == "val" and src.heldout == 0) or (split == "train" and src.heldout == 1):
        return None
    tok = load_tokenizer(tokenizer, cache_dir) if isinstance(tokenizer, str) else tokenizer
    key = source_key(src, tok)
    stream_path, starts_path = _paths(cache_dir, key, split)
    if not all(p.exists() for s in SPLITS for p in _paths(cache_dir, key, s)):
        _build_source(src, tok, cache_dir, key)
    stream, starts = np.load(stream_path, mmap_mode="r"), np.load(starts_path, mmap_mode="r")
    if stream.shape[0] == 0:
        other = "train" if split == "val" else "val"
        n = np.load(_paths(cache_dir, key, other)[1], mmap_mode="r").shape[0]
        which = "held-out" if split == "val" else "training"
        raise ValueError(f"{src.label}: none of its {n} documents falls in the {which} split (heldout="
                         f"{src.heldout}); give it more documents or another 'heldout'")
    return stream, starts, key


# ----------------------------------------------------------------------------------------- mixing
def _interleave(parts, weights, sep: int, dtype, n_tokens: int | None) -> np.ndarray:
    """Whole documents of several (stream, starts) by weight (see the module docstring)."""
    spans = []
    for stream, starts in parts:
        ends = np.append(np.asarray(starts[1:], np.int64) - 1, stream.shape[0])
        spans.append(_pieces(np.asarray(starts, np.int64), ends))
    emitted, pos = [0] * len(parts), [0] * len(parts)
    picks, total = [], 0
    heap = [(0.0, i) for i in range(len(parts))]
    while heap:
        _, i = heapq.heappop(heap)
        if pos[i] == spans[i][0].shape[0]:
            if n_tokens is None:
                break
            pos[i] = 0
        a, b = int(spans[i][0][pos[i]]), int(spans[i][1][pos[i]])
        pos[i] += 1
        total += (1 if picks else 0) + b - a
        picks.append((i, a, b))
        emitted[i] += b - a + 1
        if n_tokens is not None and total >= n_tokens:
            break
        heapq.heappush(heap, (emitted[i] / weights[i], i))
    out = np.empty(total, dtype)
    at = 0
    for j, (i, a, b) in enumerate(picks):
        if j:
            out[at] = sep
            at += 1
        out[at:at + b - a] = parts[i][0][a:b]
        at += b - a
    return out if n_tokens is None else out[:n_tokens]


def _pieces(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the documents [starts[i], ends[i]) cut into consecutive pieces of at most MIX_PIECE."""
    n = np.maximum(1, -(-(ends - starts) // MIX_PIECE))  # pieces per document (an empty one stays one)
    doc = np.repeat(np.arange(starts.shape[0]), n)
    k = np.arange(doc.shape[0]) - np.repeat(np.cumsum(n) - n, n)
    a = starts[doc] + k * MIX_PIECE
    return a, np.minimum(a + MIX_PIECE, ends[doc])


def mixture_ids(specs, tokenizer, split: str, cache_dir: str | os.PathLike = "cache/text", *,
                n_tokens: int | None = None, seq_len: int | None = None) -> np.ndarray:
    """One token stream (n,) for a split ("train" or "val") of a mixture of sources (a list of
    specs, see the module docstring), in the dtype `token_ids` uses, memory-mapped from the cache.

    `tokenizer`: a name (`load_tokenizer`) or a fast tokenizer object. `n_tokens`: cut (and, where
    a source runs out, repeat) to exactly this many tokens. `seq_len`: refuse a stream shorter than
    one window of seq_len + 1 tokens.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n_tokens is not None and not (isinstance(n_tokens, int) and n_tokens >= 1):
        raise ValueError(f"n_tokens must be an integer >= 1 or None, got {n_tokens!r}")
    cache_dir = Path(cache_dir)
    sources = check_sources(specs, tokenizer)
    got = [(src, source_split(src, tokenizer, split, cache_dir)) for src in sources]
    got = [(src, r) for src, r in got if r is not None]
    if not got:
        raise ValueError(f"no data source holds out documents for the {split!r} split (every 'heldout' is "
                         f"{0 if split == 'val' else 1})")
    if len(got) == 1 and n_tokens is None:
        ids = got[0][1][0]
    else:
        parts = [[r[2], src.weight] for src, r in got] + [split, n_tokens, _MIX_FORMAT]
        mkey = hashlib.sha1(json.dumps(parts).encode())
        path = cache_dir / f"mix-{mkey.hexdigest()[:16]}-{split}.npy"
        if not path.exists():
            tok = load_tokenizer(tokenizer, cache_dir) if isinstance(tokenizer, str) else tokenizer
            stream = _interleave([(r[0], r[1]) for _, r in got], [src.weight for src, _ in got],
                                 document_separator(tok), ids_dtype(tok), n_tokens)
            save_ids(path, stream)
        ids = np.load(path, mmap_mode="r")
    if seq_len is not None and ids.shape[0] < seq_len + 1:
        which = "held-out" if split == "val" else "training"
        names = ", ".join(src.label for src, _ in got)
        raise ValueError(f"the {which} split of the data ({names}) has {ids.shape[0]} tokens, fewer than one "
                         f"window of seq_len + 1 = {seq_len + 1}")
    return ids


def mixture_key(specs, tokenizer, cache_dir: str | os.PathLike = "cache/text") -> str:
    """A short hash naming a mixture's data (its sources' keys and weights), e.g. for output caches."""
    keys = []
    for src in check_sources(specs, tokenizer):
        tok = load_tokenizer(tokenizer, cache_dir) if isinstance(tokenizer, str) else tokenizer
        key = f"{src.target}-{tokenizer_key(tok)}" if src.kind == "name" else source_key(src, tok)
        keys.append([key, src.weight])
    return hashlib.sha1(json.dumps(keys + [_MIX_FORMAT]).encode()).hexdigest()[:12]


def split_ids(sources, tokenizer, cache_dir: str | os.PathLike = "cache/text",
              seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(training ids, held-out ids, data key) of a recipe's `data.sources`. None: today's
    Shakespeare streams (`token_ids("train"/"val")`, bit for bit) and the key "" (so names built
    from it are today's); a list of specs: `mixture_ids` of each split and "-data<mixture_key>"."""
    if sources is None:
        return token_ids("train", tokenizer, cache_dir), token_ids("val", tokenizer, cache_dir), ""
    check_sources(sources, tokenizer)
    return (mixture_ids(sources, tokenizer, "train", cache_dir, seq_len=seq_len),
            mixture_ids(sources, tokenizer, "val", cache_dir, seq_len=seq_len),
            f"-data{mixture_key(sources, tokenizer, cache_dir)}")
