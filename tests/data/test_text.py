"""Shakespeare corpus, its whole-work split, the tokenizers, token caches and batch windows."""

import numpy as np
import pytest
import torch

from transmamba.data import text as T
from transmamba.io.files import package_dir


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text")


def test_works_and_split():
    works = T.shakespeare_works()
    assert len(works) == 42 and all(len(t) > 1000 for t in works.values())
    train, val, all_ = T.split_works("train"), T.split_works("val"), T.split_works("all")
    assert val == sorted(T.VAL_WORKS) and len(train) == 38
    assert not set(train) & set(val) and sorted(train + val) == all_ == sorted(works)
    assert T.split_works("train") == train  # deterministic
    assert "HAMLET" in T.split_texts("val")[val.index("hamlet")][:200]
    with pytest.raises(ValueError, match="split"):
        T.split_works("test")


def test_local_bpe_and_token_ids(cache):
    tok = T.load_tokenizer("bpe-512", cache)
    assert len(tok) == 512 and tok.convert_tokens_to_ids(T.EOT) == 0
    assert (cache / "tokenizer-bpe-512" / "tokenizer.json").exists()
    text = T.shakespeare_works()["hamlet"][:3000] + " naïve café — 1603 ☃"
    assert tok.decode(T.encode(tok, [text])[0]) == text  # byte level: lossless on unseen text

    ids = T.token_ids("val", "bpe-512", cache)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and ids.ndim == 1
    assert int((ids == 0).sum()) == len(T.VAL_WORKS) - 1  # one separator between works
    assert tok.decode(np.asarray(ids)) == T.EOT.join(T.split_texts("val"))
    again = T.token_ids("val", "bpe-512", cache)
    assert np.array_equal(ids, again)
    with pytest.raises(ValueError, match="tokenizer name"):
        T.load_tokenizer("gpt2", cache)


def test_smollm2_tokenizer(cache):
    tok = T.load_tokenizer("smollm2", cache)  # read from the GGUF once, then from cache_dir
    assert len(tok) == 49152 and tok.convert_tokens_to_ids(T.EOT) == 0
    assert (cache / "tokenizer-smollm2" / "tokenizer.json").exists()
    text = T.shakespeare_works()["tempest"][:3000] + " héllo ☃ 42"
    ids = T.encode(tok, [text])[0]
    assert tok.decode(ids) == text and len(ids) < len(text) / 2.5


@pytest.mark.slow
def test_smollm2_tokenizer_cached_equals_gguf(cache):
    from transformers import AutoTokenizer

    tok = T.load_tokenizer("smollm2", cache)
    gguf = AutoTokenizer.from_pretrained(package_dir(T.SMOLLM2_PACKAGE), gguf_file=T.SMOLLM2_GGUF)
    text = "\n".join(T.split_texts("val"))
    assert T.encode(tok, [text]) == T.encode(gguf, [text])


def test_batches_shift_and_seed():
    ids = np.arange(1000, dtype=np.uint16)
    a = list(T.batches(ids, 4, 16, seed=3, n_batches=3))
    b = list(T.batches(ids, 4, 16, seed=3, n_batches=3))
    c = list(T.batches(ids, 4, 16, seed=4, n_batches=3))
    assert len(a) == 3 and a[0][0].shape == (4, 16) and a[0][0].dtype == torch.int64
    for (x, y), (x2, y2) in zip(a, b):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows
        assert int(y.max()) <= 999
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_eval_batches_cover_each_target_once():
    n, L = 203, 10
    ids = np.arange(n, dtype=np.int32)
    got = list(T.eval_batches(ids, 3, L))
    assert T.eval_windows(n, L) == 20 and [x.shape[0] for x, _ in got] == [3] * 6 + [2]
    ys = torch.cat([y.reshape(-1) for _, y in got])
    assert torch.equal(ys, torch.arange(1, 20 * L + 1))
    xs = torch.cat([x.reshape(-1) for x, _ in got])
    assert torch.equal(xs, torch.arange(0, 20 * L))
    assert sum(x.shape[0] for x, _ in T.eval_batches(ids, 3, L, max_windows=5)) == 5


def test_batch_args_are_checked():
    with pytest.raises(ValueError, match="seq_len"):
        next(T.batches(np.arange(10), 2, 10, seed=0))
    with pytest.raises(ValueError, match="1-D"):
        next(T.eval_batches(np.zeros((4, 40), np.int32), 2, 8))
    with pytest.raises(ValueError, match="batch_size"):
        next(T.eval_batches(np.arange(100), 0, 8))
