"""`transmamba teacher sample`: a tiny random Llama writes a corpus; it reaches N tokens, is
deterministic in the seed, a run stopped after k shards and resumed equals an uninterrupted one
byte for byte, other settings are refused by name, and the `teacher_samples` source reads it."""

import json

import numpy as np
import pytest
from tiny_fixtures import tiny_llama, tiny_tokenizer

from transmamba.teachers.sample import sample_corpus

KW = dict(teacher_name="tiny", batch_size=3, max_new_tokens=12, seed=5, progress=False)


@pytest.fixture(scope="module")
def teacher():
    tok = tiny_tokenizer(300)
    return tiny_llama(vocab_size=len(tok)), tok


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_corpus_has_n_tokens_and_is_deterministic(teacher, tmp_path):
    model, tok = teacher
    m = sample_corpus(model, tok, tmp_path / "a", tokens=150, **KW)
    assert m["tokens"] >= 150 and len(m["shards"]) >= 2
    lines = [json.loads(x) for p in sorted((tmp_path / "a").glob("shard-*.jsonl")) for x in p.read_text().splitlines()]
    assert len(lines) == 3 * len(m["shards"]) and sum(r["n_tokens"] for r in lines) == m["tokens"]
    assert all(r["text"].startswith(r["prompt"]) for r in lines)
    assert len({r["text"] for r in lines}) == len(lines)  # varied samples
    sample_corpus(model, tok, tmp_path / "b", tokens=150, **KW)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    sample_corpus(model, tok, tmp_path / "c", tokens=150, **{**KW, "seed": 6})
    assert _files(tmp_path / "a")["shard-00000.jsonl"] != _files(tmp_path / "c")["shard-00000.jsonl"]


def test_resumed_run_equals_uninterrupted_run(teacher, tmp_path):
    model, tok = teacher
    full = sample_corpus(model, tok, tmp_path / "full", tokens=200, **KW)
    n = len(full["shards"])
    assert n >= 3
    part = sample_corpus(model, tok, tmp_path / "part", tokens=200, max_shards=2, **KW)  # "killed" after 2
    assert len(part["shards"]) == 2
    resumed = sample_corpus(model, tok, tmp_path / "part", tokens=200, **KW)
    assert resumed["run"]["new_tokens"] == full["tokens"] - part["tokens"]
    assert _files(tmp_path / "part") == _files(tmp_path / "full")
    # a lost last shard is sampled again, identically; a complete corpus is reused as it is
    (tmp_path / "part" / f"shard-{n - 1:05d}.jsonl").unlink()
    sample_corpus(model, tok, tmp_path / "part", tokens=200, **KW)
    assert _files(tmp_path / "part") == _files(tmp_path / "full")
    again = sample_corpus(model, tok, tmp_path / "part", tokens=200, **KW)
    assert again["run"]["new_tokens"] == 0 and _files(tmp_path / "part") == _files(tmp_path / "full")


def test_other_settings_are_refused_by_name(teacher, tmp_path):
    model, tok = teacher
    sample_corpus(model, tok, tmp_path / "a", tokens=20, **KW)
    before = _files(tmp_path / "a")
    with pytest.raises(ValueError, match="top_p=0.95.*top_p=0.5"):
        sample_corpus(model, tok, tmp_path / "a", tokens=20, top_p=0.5, **KW)
    with pytest.raises(ValueError, match="seed=5.*seed=7"):
        sample_corpus(model, tok, tmp_path / "a", tokens=20, **{**KW, "seed": 7})
    with pytest.raises(ValueError, match="teacher_hash"):
        sample_corpus(tiny_llama(seed=1, vocab_size=len(tok)), tok, tmp_path / "a", tokens=20, **KW)
    assert _files(tmp_path / "a") == before  # nothing written
    with pytest.raises(ValueError, match="--top-p"):
        sample_corpus(model, tok, tmp_path / "b", tokens=20, top_p=0.0, **KW)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a teacher-samples corpus"):
        sample_corpus(model, tok, tmp_path / "other", tokens=20, **KW)


def test_teacher_samples_source_reads_the_corpus(teacher, tmp_path):
    from transmamba.data.sources import mixture_ids
    from transmamba.data.text import document_separator

    model, tok = teacher
    sample_corpus(model, tok, tmp_path / "a", tokens=150, **KW)
    texts = [json.loads(x)["text"] for p in sorted((tmp_path / "a").glob("shard-*.jsonl"))
             for x in p.read_text().splitlines()]
    spec = [{"teacher_samples": str(tmp_path / "a"), "heldout": 0.3}]
    parts = [np.asarray(mixture_ids(spec, tok, s, tmp_path / "cache")) for s in ("train", "val")]
    sep = document_separator(tok)
    got = [tok.decode(d) for ids in parts for d in np.split(ids, np.flatnonzero(ids == sep)) if len(d)]
    got = [g.removeprefix(tok.eos_token) for g in got]
    assert sorted(got) == sorted(t for t in texts if t.strip()) and len(parts[1]) > 0
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        mixture_ids([{"teacher_samples": str(tmp_path)}], tok, "train", tmp_path / "cache")


def test_cli_teacher_sample(teacher, tmp_path, capsys):
    from transmamba.cli import main

    model, tok = teacher
    model.save_pretrained(tmp_path / "t")
    tok.save_pretrained(tmp_path / "t")
    argv = ["teacher", "sample", "--tokens", "30", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "c"),
            "--batch-size", "2", "--max-new-tokens", "8", "--quiet"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["settings"]["batch_size"] == 2
    assert main(argv[:-1] + ["--top-p", "0.5", "--quiet"]) == 2
    assert "top_p=0.5" in capsys.readouterr().err
