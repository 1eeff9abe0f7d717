"""Data sources for convert / train: each kind round-trips by whole document, mixtures follow their
weights, streams are cached by content, shakespeare is today's stream, bad data is refused by name."""

import hashlib
import json
import os

import numpy as np
import pytest

from tiny_fixtures import tiny_tokenizer
from transmamba.data import sources as S
from transmamba.data import text as T

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(300)  # eos "</s>" is the document separator


def _docs(n, tag):
    return [f"{tag} document {i}: " + " ".join(f"w{i}x{j}" for j in range(5 + i % 7)) for i in range(n)]


def _decoded_docs(ids, tok):
    sep = T.document_separator(tok)
    text = tok.decode(np.asarray(ids).tolist())
    assert (np.asarray(ids) == sep).sum() == text.count(tok.convert_ids_to_tokens(sep))
    return text.split(tok.convert_ids_to_tokens(sep))


def _split_docs(spec, tok, cache):
    train = _decoded_docs(S.mixture_ids([spec], tok, "train", cache), tok)
    val = _decoded_docs(S.mixture_ids([spec], tok, "val", cache), tok)
    return train, val


def _check_roundtrip(spec, docs, tok, cache, heldout=0.3):
    train, val = _split_docs({**spec, "heldout": heldout}, tok, cache)
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert train and val
    rule = {d for d in docs if int.from_bytes(hashlib.sha1(d.encode()).digest()[:8], "big") < heldout * 2 ** 64}
    assert set(val) == rule  # the documented rule
    return train, val


def test_text_files_roundtrip_and_split_is_stable(tok, tmp_path):
    docs = _docs(30, "file")
    for i, d in enumerate(docs):
        (tmp_path / f"d{i:02}.txt").write_text(d)
    train, val = _check_roundtrip({"files": str(tmp_path / "*.txt")}, docs, tok, tmp_path / "c")
    assert train == [d for d in docs if d in set(train)]  # in file order
    (tmp_path / "d99.txt").write_text("a new document")  # adding a file moves no document
    train2, val2 = _split_docs({"files": str(tmp_path / "*.txt"), "heldout": 0.3}, tok, tmp_path / "c")
    assert set(val) <= set(val2) and set(train) <= set(train2)


def test_jsonl_parquet_and_datasets_roundtrip(tok, tmp_path):
    docs = _docs(30, "rec")
    recs = [{"text": d, "id": i} for i, d in enumerate(docs)]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    _check_roundtrip({"jsonl": str(tmp_path / "x.jsonl"), "field": "text"}, docs, tok, tmp_path / "c")

    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": docs, "n": list(range(30))}), tmp_path / "x.parquet")
    _check_roundtrip({"parquet": str(tmp_path / "x.parquet"), "field": "body"}, docs, tok, tmp_path / "c")

    import datasets
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "disk"))
    _check_roundtrip({"hf_disk": str(tmp_path / "disk"), "field": "text"}, docs, tok, tmp_path / "c")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "test": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "dd"))
    _check_roundtrip({"hf_disk": str(tmp_path / "dd"), "field": "text", "split": "train"}, docs, tok, tmp_path / "c")
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]; name one"):
        S.mixture_ids([{"hf_disk": str(tmp_path / "dd"), "field": "text"}], tok, "train", tmp_path / "c")
    _check_roundtrip({"dataset": "json", "data_files": str(tmp_path / "x.jsonl"), "field": "text"},
                     docs, tok, tmp_path / "c")


def test_chat_uses_the_template(tok, tmp_path):
    convs = [[{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]
             for i in range(20)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in convs))
    with pytest.raises(ValueError, match=r"chat source .*chat.jsonl.*has no chat template"):
        S.mixture_ids([{"chat": str(path)}], tok, "train", tmp_path / "c")
    tok.chat_template = CHAT_TEMPLATE
    try:
        rendered = [f"<|user|>question {i}?\n<|assistant|>answer {i}.\n" for i in range(20)]
        assert rendered[0] == tok.apply_chat_template(convs[0], tokenize=False)
        _check_roundtrip({"chat": str(path)}, rendered, tok, tmp_path / "c")
        tok.chat_template = CHAT_TEMPLATE.replace("<|", "[").replace("|>", "]")  # another template, same cache
        _check_roundtrip({"chat": str(path)}, [r.replace("<|", "[").replace("|>", "]") for r in rendered],
                         tok, tmp_path / "c")
        tok.chat_template = CHAT_TEMPLATE
        path.write_text(json.dumps({"messages": [{"role": "user"}]}))
        with pytest.raises(ValueError, match=r"chat.jsonl:1: message 0 must have a string 'role' and 'content'"):
            S.mixture_ids([{"chat": str(path)}], tok, "train", tmp_path / "c")
    finally:
        tok.chat_template = None


def test_shakespeare_source_is_todays_stream(tok, tmp_path, monkeypatch):
    sep, dtype = T.document_separator(tok), T.ids_dtype(tok)
    want = []  # today's token_ids, written out: works of the split in name order joined by sep
    for i, ids in enumerate(T.encode(tok, T.split_texts("val"))):
        want += ([sep] if i else []) + ids
    got = S.mixture_ids([{"name": "shakespeare"}], tok, "val", tmp_path)
    assert got.dtype == dtype and np.array_equal(got, np.asarray(want, dtype))
    assert np.array_equal(T.token_ids("val", tok, tmp_path), got)
    calls = []
    monkeypatch.setattr(S, "token_ids", lambda *a: calls.append(a) or got)  # no need to tokenize "train" here
    tr, va, key = S.split_ids(None, tok, tmp_path)
    assert key == "" and calls == [("train", tok, tmp_path), ("val", tok, tmp_path)] and tr is got and va is got
    monkeypatch.undo()
    # in a mixture its works stay whole documents
    (tmp_path / "a.txt").write_text("a short document of another source")
    mix = _decoded_docs(S.mixture_ids([{"name": "shakespeare"}, {"files": str(tmp_path / "a.txt"), "heldout": 1}],
                                      tok, "val", tmp_path), tok)
    works = [tok.decode(ids) for ids in T.encode(tok, T.split_texts("val"))]
    assert [d for d in mix if d in works] == works[:len([d for d in mix if d in works])]
    assert "a short document of another source" in mix


def test_mixture_weights_determinism_and_cache(tok, tmp_path, monkeypatch):
    a, b = _docs(200, "alpha"), _docs(200, "beta")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"t": d}) for d in a))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"t": d}) for d in b))
    specs = [{"jsonl": str(tmp_path / "a.jsonl"), "field": "t", "weight": 3},
             {"jsonl": str(tmp_path / "b.jsonl"), "field": "t", "weight": 1}]
    cache = tmp_path / "c"
    ids = S.mixture_ids(specs, tok, "train", cache, n_tokens=3000)
    assert ids.shape == (3000,) and ids.dtype == np.uint16
    docs = _decoded_docs(ids, tok)[:-1]  # the last one is cut
    n_a = sum(len(T.encode(tok, [d])[0]) for d in docs if d.startswith("alpha"))
    n_b = sum(len(T.encode(tok, [d])[0]) for d in docs if d.startswith("beta"))
    assert abs(n_a / (n_a + n_b) - 0.75) < 0.03
    assert set(docs) <= set(a) | set(b)
    # deterministic, and cached: nothing is tokenized again, no file rewritten
    files = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    monkeypatch.setattr(S, "encode", lambda *a: pytest.fail("re-tokenized a cached source"))
    assert np.array_equal(S.mixture_ids(specs, tok, "train", cache, n_tokens=3000), ids)
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == files
    # without n_tokens: no document repeats; a changed file changes the key and is tokenized again
    full = _decoded_docs(S.mixture_ids(specs, tok, "train", cache), tok)
    assert len(full) == len(set(full))
    key = S.source_key(S.parse_source(specs[1]), tok)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"t": d + "!"}) for d in b))
    assert S.source_key(S.parse_source(specs[1]), tok) != key
    with pytest.raises(pytest.fail.Exception, match="re-tokenized"):
        S.mixture_ids(specs, tok, "train", cache)


def test_long_documents_are_mixed_by_pieces(tok, tmp_path, monkeypatch):
    """Two long documents against many short ones at 1:1: the shares follow the weights up to one
    piece (MIX_PIECE tokens), not one whole long document; the long documents' pieces keep their order."""
    monkeypatch.setattr(S, "MIX_PIECE", 64)
    long_docs = [" ".join(f"L{d}w{i}" for i in range(400)) for d in range(2)]
    for d, text in enumerate(long_docs):
        (tmp_path / f"long{d}.txt").write_text(text)
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps({"t": f"x{i} x{i}"}) for i in range(600)))
    specs = [{"files": str(tmp_path / "long*.txt"), "weight": 1, "heldout": 0},
             {"jsonl": str(tmp_path / "s.jsonl"), "field": "t", "weight": 1, "heldout": 0}]
    ids = np.asarray(S.mixture_ids(specs, tok, "train", tmp_path / "c"))
    pieces = _decoded_docs(ids, tok)
    is_short = lambda p: "x" in p  # noqa: E731  (short documents are "x<i> x<i>" (< 64 tokens); long ones L<d>w<i>)
    n_short = sum(len(T.encode(tok, [p])[0]) for p in pieces if is_short(p))
    n_long = sum(len(T.encode(tok, [p])[0]) for p in pieces if not is_short(p))
    assert n_long and n_short and abs(n_long / (n_long + n_short) - 0.5) < 0.05
    long_text = "".join(p for p in pieces if not is_short(p))
    flat = lambda t: "".join(t.split())  # noqa: E731
    assert flat(long_text) == flat("".join(long_docs))  # every piece, in order
    assert max(len(T.encode(tok, [p])[0]) for p in pieces) <= 64 + 1


def _raises(spec, match, tok, tmp_path, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        S.mixture_ids([spec] if isinstance(spec, dict) else spec, tok, kw.pop("split", "train"), tmp_path / "c", **kw)


def test_bad_data_is_refused_by_name(tok, tmp_path):
    p = tmp_path
    (p / "empty.txt").write_text("  \n")
    _raises({"files": str(p / "empty.txt")}, r"empty.txt: empty file", tok, p)
    (p / "latin.txt").write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    _raises({"files": str(p / "latin.txt")}, r"latin.txt: not UTF-8 text: byte 12 \(line 2\)", tok, p)
    (p / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    _raises({"jsonl": str(p / "bad.jsonl"), "field": "text"}, r"bad.jsonl:2: not JSON", tok, p)
    (p / "nonutf.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    _raises({"jsonl": str(p / "nonutf.jsonl"), "field": "text"}, r"nonutf.jsonl:2: not UTF-8 text: byte 30", tok, p)
    (p / "field.jsonl").write_text('{"text": "fine"}\n\n{"body": "x", "id": 1}\n')
    _raises({"jsonl": str(p / "field.jsonl"), "field": "text"},
            r"field.jsonl:3: record has no field 'text' \(keys present: \['body', 'id'\]\)", tok, p)
    (p / "num.jsonl").write_text('{"text": 3}\n')
    _raises({"jsonl": str(p / "num.jsonl"), "field": "text"}, r"num.jsonl:1: field 'text' is a int", tok, p)
    (p / "blank.jsonl").write_text("\n\n")
    _raises({"jsonl": str(p / "blank.jsonl"), "field": "text"}, r"blank.jsonl: empty file", tok, p)
    (p / "emptyrecs.jsonl").write_text('{"text": ""}\n')
    _raises({"jsonl": str(p / "emptyrecs.jsonl"), "field": "text"}, r"no documents", tok, p)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["a", None]}), p / "x.parquet")
    _raises({"parquet": str(p / "x.parquet"), "field": "text"}, r"x.parquet: no column 'text' \(columns present: "
            r"\['body'\]\)", tok, p)
    _raises({"parquet": str(p / "x.parquet"), "field": "body"}, r"x.parquet row 1: field 'body' is null", tok, p)
    _raises({"files": str(p / "nothing*.txt")}, r"matches no file", tok, p, exc=FileNotFoundError)
    _raises({"hf_disk": str(p / "nodir"), "field": "text"}, r"no such directory", tok, p, exc=FileNotFoundError)
    _raises({"csv": "x.csv"}, r"names no source kind; give exactly one of name, files", tok, p)
    _raises({"name": "wikipedia"}, r"unknown source name 'wikipedia'", tok, p)
    _raises({"jsonl": "x.jsonl"}, r"needs \['field'\]", tok, p)
    _raises({"files": "x", "weight": 0}, r"'weight' must be a finite number > 0", tok, p)
    _raises({"name": "shakespeare", "heldout": 0.2}, r"'heldout' does not apply", tok, p)
    # too little data for one window, and a split with no document
    (p / "short.txt").write_text("just a few words")
    _raises({"files": str(p / "short.txt"), "heldout": 0}, r"training split of the data \(files source .*short.txt'\) "
            r"has \d+ tokens, fewer than one window of seq_len \+ 1 = 65", tok, p, seq_len=64)
    _raises({"files": str(p / "short.txt"), "heldout": 0.5 if S.is_heldout("just a few words", 0.5) else 0.01},
            r"none of its 1 documents falls in the (held-out|training) split", tok, p,
            split="train" if S.is_heldout("just a few words", 0.5) else "val")
    _raises({"files": str(p / "short.txt"), "heldout": 0}, r"no data source holds out documents", tok, p, split="val")


def test_convert_distils_on_data_sources(tok, tmp_path):
    """recipes/convert.py `data.sources`: the teacher cache is built from the sources' tokens (its
    directory named by their key), and a bad source is refused before anything is written."""
    from tiny_fixtures import run_tiny_convert
    from tiny_teachers import tiny_teacher
    from transmamba.teachers.cache import TeacherCache

    teacher = tmp_path / "teacher"
    tiny_teacher("llama", vocab_size=len(tok)).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    docs = [" ".join(T.split_texts("val")[0][2000 + 300 * i: 2300 + 300 * i].split()) for i in range(40)]
    for i, d in enumerate(docs):
        (tmp_path / f"d{i:02}.txt").write_text(d)
    sources = f"[{{files: '{tmp_path}/d*.txt', heldout: 0.3}}]"
    with pytest.raises(FileNotFoundError, match="matches no file"):
        run_tiny_convert(tmp_path, teacher, "bad", "--data.sources", "[{files: 'nothing/*.txt'}]")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tc").exists()
    s = run_tiny_convert(tmp_path, teacher, "mine", "--data.sources", sources, "--data.cache_dir", str(tmp_path / "t"),
                         transpoints="[0]")
    assert np.isfinite(s["val_ppl"]) and np.isfinite(s["teacher_val_ppl"])
    (tc,) = [p for p in (tmp_path / "tc").iterdir() if p.is_dir()]
    assert "-data" in tc.name
    train = S.mixture_ids([{"files": f"{tmp_path}/d*.txt", "heldout": 0.3}], tok, "train", tmp_path / "t")
    windows = np.asarray(TeacherCache(tc).tokens)
    stream = np.asarray(train).tolist()
    assert all(any(stream[k:k + windows.shape[1]] == w.tolist() for k in range(len(stream))) for w in windows)
