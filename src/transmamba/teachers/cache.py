"""Teacher outputs computed once and memory-mapped during distillation.

Running SmolLM2 inside every training step costs ~470 tokens/s on 2 cores, so the teacher is run
once over fixed windows of the token stream and what the losses need is stored:

    tokens.npy     (n, l+1)    int32   the windows; x = tokens[:, :-1], y = tokens[:, 1:]
    topk_idx.npy   (n, l, k)   int32   the teacher's k most likely next tokens, most likely first
    topk_logp.npy  (n, l, k)   float32 their log-probabilities log p(v | x_<=t) (full-vocab softmax)
    hidden_<i>.npy (n, l, d)   bf16    hidden_states[i] of the HF model (0 = token embeddings,
                                       i in 1..N-1 = residual stream after block i, N = after the
                                       final RMSNorm, N = number of layers); bfloat16 stored as
                                       its int16 bits (numpy has no bfloat16), or float32

Hidden states are stored in bfloat16 (fp32's range: a residual stream of 1e5 cannot overflow, as
it did in float16) or float32, and every batch is checked finite before it is written: a teacher
that produces NaN/Inf is refused naming the layer and window, never cached.
    meta.json                          shapes, settings, fingerprints of the ids and the teacher

The directory is written under a temporary name and renamed when complete, so an interrupted
build leaves nothing that `TeacherCache` would open.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from transmamba.io.files import atomic_dir, remove_stale_tmp
from transmamba.ops.validate import check_dim, check_tensor

FORMAT_VERSION = 2  # 2: hidden states in bfloat16 (int16 bits) or float32, never float16
HIDDEN_DTYPES = {"bfloat16": (np.int16, torch.bfloat16), "float32": (np.float32, torch.float32)}


def window_starts(n_tokens: int, seq_len: int, n_windows: int) -> np.ndarray:
    """Evenly spread, non-overlapping window starts over a stream of n tokens.

    s_j = floor(j (n - 1 - l) / (w - 1)), j = 0..w-1; consecutive starts differ by >= l whenever
    w l <= n - 1, so windows of l + 1 tokens share at most their seam token.
    """
    if seq_len < 1 or n_windows < 1:
        raise ValueError(f"seq_len and n_windows must be >= 1, got seq_len={seq_len}, n_windows={n_windows}")
    if n_windows * seq_len > n_tokens - 1:
        raise ValueError(f"n_windows={n_windows} windows of seq_len={seq_len} do not fit without overlap "
                         f"in ids of {n_tokens} tokens (at most {(n_tokens - 1) // seq_len})")
    if n_windows == 1:
        return np.zeros(1, dtype=np.int64)
    j = np.arange(n_windows, dtype=np.int64)
    return (j * (n_tokens - 1 - seq_len)) // (n_windows - 1)


def _fingerprint_ids(ids: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _fingerprint_model(model) -> str:
    """Hash of the config and of a few weight statistics (cheap; catches a different teacher)."""
    h = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for p in list(model.parameters())[:4]:
            h.update(np.float64(p.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def build_teacher_cache(model, ids: np.ndarray, out_dir: str | os.PathLike, *, seq_len: int,
                        n_windows: int, top_k: int = 32, hidden_layers: Sequence[int] = (),
                        batch_size: int = 8, hidden_dtype: str = "bfloat16", overwrite: bool = False,
                        progress: bool = True) -> Path:
    """Run the teacher over `n_windows` windows (`window_starts`) of `ids`, store its outputs.

    For every position t of a window x: topk over v of log p(v | x_<=t) = logits_v - logsumexp(logits),
    and the requested hidden_states[i] "(l, d)" in `hidden_dtype` ("bfloat16" | "float32"). An existing complete cache built with
    the same settings, ids and teacher is kept and its path returned; one with other settings
    raises FileExistsError unless `overwrite`.
    """
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer numpy array (n,), got {type(ids).__name__} "
                         f"of shape {getattr(ids, 'shape', None)}")
    config = model.config
    vocab, n_layers = config.vocab_size, config.num_hidden_layers
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [1, vocab={vocab}], got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = []
    for i in hidden_layers:
        if not -(n_layers + 1) <= i <= n_layers:
            raise ValueError(f"hidden_layers entry {i} out of range for {n_layers} layers "
                             f"(hidden_states has {n_layers + 1} entries)")
        layers.append(i % (n_layers + 1))
    layers = sorted(set(layers))
    starts = window_starts(ids.shape[0], seq_len, n_windows)
    if hidden_dtype not in HIDDEN_DTYPES:
        raise ValueError(f"hidden_dtype must be one of {sorted(HIDDEN_DTYPES)}, got {hidden_dtype!r} "
                         f"(float16 overflows on real residual streams)")
    np_dtype, torch_dtype = HIDDEN_DTYPES[hidden_dtype]

    out = Path(out_dir)
    remove_stale_tmp(out)  # temporaries of a build that was killed
    meta = {"format": FORMAT_VERSION, "n_windows": n_windows, "seq_len": seq_len, "top_k": top_k,
            "hidden_layers": layers, "hidden_dtype": hidden_dtype, "d_model": config.hidden_size,
            "vocab": vocab, "n_layers": n_layers, "ids_sha1": _fingerprint_ids(ids),
            "teacher": _fingerprint_model(model),
            "teacher_name": str(getattr(config, "name_or_path", "") or "")}
    if out.exists():
        old = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else None
        if old is not None and all(old.get(k) == v for k, v in meta.items() if k != "teacher_name"):
            return out
        if not overwrite:
            what = "a teacher cache built with other settings" if old else "something that is no teacher cache"
            raise FileExistsError(f"{out} holds {what}; pass overwrite=True or another out_dir")

    tmp = atomic_dir(out)
    try:
        n, d = n_windows, config.hidden_size

        def mm(name, shape, dt):
            return np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dt, shape=shape)

        tokens = mm("tokens.npy", (n, seq_len + 1), np.int32)
        tokens[:] = np.asarray(ids[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
        topk_idx = mm("topk_idx.npy", (n, seq_len, top_k), np.int32)
        topk_logp = mm("topk_logp.npy", (n, seq_len, top_k), np.float32)
        hidden = {i: mm(f"hidden_{i}.npy", (n, seq_len, d), np_dtype) for i in layers}
        device = next(model.parameters()).device
        with torch.inference_mode(), tqdm(total=n, unit="win", desc="teacher cache", disable=not progress) as bar:
            for s in range(0, n, batch_size):
                e = min(s + batch_size, n)
                x = torch.from_numpy(np.asarray(tokens[s:e, :-1], dtype=np.int64)).to(device)
                o = model(input_ids=x, output_hidden_states=bool(layers), use_cache=False)
                logp = torch.log_softmax(o.logits.float(), dim=-1)
                where = f"teacher {meta['teacher_name'] or config.model_type!r}, windows {s}..{e - 1}"
                if not bool(torch.isfinite(logp).all()):
                    raise FloatingPointError(f"the teacher's logits are not finite ({where}); nothing is cached")
                v, i = logp.topk(top_k, dim=-1)
                topk_logp[s:e] = v.cpu().numpy()
                topk_idx[s:e] = i.to(torch.int32).cpu().numpy()
                for li in layers:
                    h = o.hidden_states[li].float().to(torch_dtype)
                    if not bool(torch.isfinite(h).all()):
                        raise FloatingPointError(f"hidden_states[{li}] is not finite in {hidden_dtype} ({where}); "
                                                 f"nothing is cached")
                    hidden[li][s:e] = (h.view(torch.int16) if hidden_dtype == "bfloat16" else h).cpu().numpy()
                del o, logp
                bar.update(e - s)
        for a in (tokens, topk_idx, topk_logp, *hidden.values()):
            a.flush()
        del tokens, topk_idx, topk_logp, hidden
        np.save(tmp / "starts.npy", starts)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class TeacherCache:
    """A built teacher cache, memory-mapped read-only; batches are taken by window index."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir)
        if not (self.path / "meta.json").exists():
            raise FileNotFoundError(f"no teacher cache at {self.path} (meta.json missing)")
        self.meta = json.loads((self.path / "meta.json").read_text())
        load = lambda name: np.load(self.path / name, mmap_mode="r")  # noqa: E731
        self.tokens = load("tokens.npy")
        self.topk_idx = load("topk_idx.npy")
        self.topk_logp = load("topk_logp.npy")
        self.starts = load("starts.npy")
        self.hidden = {i: load(f"hidden_{i}.npy") for i in self.meta["hidden_layers"]}

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.meta["seq_len"]

    @property
    def top_k(self) -> int:
        return self.meta["top_k"]

    @property
    def hidden_layers(self) -> list[int]:
        return list(self.meta["hidden_layers"])

    def batch(self, index, *, device="cpu", hidden_dtype: torch.dtype = torch.float32, hidden: bool = True) -> dict:
        """Windows `index` (ints, array or slice) as tensors on `device`:

        x, y "(b, l)" int64; topk_idx "(b, l, k)" int64; topk_logp "(b, l, k)" float32;
        hidden {i: "(b, l, d)" hidden_dtype} ({} with hidden=False: the hidden states are not read).
        """
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise ValueError(f"index out of range for a cache of {len(self)} windows: {index.tolist()}")
        t = lambda a, dt: torch.from_numpy(np.asarray(a[index])).to(device=device, dtype=dt)  # noqa: E731
        tok = t(self.tokens, torch.int64)
        stored = self.meta["hidden_dtype"]

        def h_of(a):
            if stored == "bfloat16":  # int16 bits of bfloat16 values
                return torch.from_numpy(np.asarray(a[index])).view(torch.bfloat16).to(device=device, dtype=hidden_dtype)
            return t(a, hidden_dtype)

        return {"x": tok[:, :-1], "y": tok[:, 1:],
                "topk_idx": t(self.topk_idx, torch.int64),
                "topk_logp": t(self.topk_logp, torch.float32),
                "hidden": {i: h_of(h) for i, h in self.hidden.items()} if hidden else {}}

    def batches(self, batch_size: int, *, seed: int | None = None, device="cpu",
                drop_last: bool = False, hidden_dtype: torch.dtype = torch.float32) -> Iterator[dict]:
        """One pass over the windows: in order, or shuffled by `seed`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.arange(len(self)) if seed is None else np.random.default_rng(seed).permutation(len(self))
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for s in range(0, stop, batch_size):
            yield self.batch(np.sort(order[s:s + batch_size]), device=device, hidden_dtype=hidden_dtype)


def _check_kl_args(student_logits, topk_idx, topk_logp, T):
    check_tensor("student_logits", student_logits, 3, "(b, l, v)")
    check_tensor("topk_logp", topk_logp, 3, "(b, l, k)")
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 3 or topk_idx.is_floating_point():
        raise ValueError(f"topk_idx must be an integer tensor of shape (b, l, k), got "
                         f"{getattr(topk_idx, 'dtype', type(topk_idx).__name__)} of shape "
                         f"{tuple(getattr(topk_idx, 'shape', ()))}")
    check_dim("topk_idx", topk_idx, 0, student_logits.shape[0], "student_logits (b, l, v)")
    check_dim("topk_idx", topk_idx, 1, student_logits.shape[1], "student_logits (b, l, v)")
    for dim in range(3):
        check_dim("topk_logp", topk_logp, dim, topk_idx.shape[dim], "topk_idx (b, l, k)")
    if topk_idx.numel() and (topk_idx.min() < 0 or topk_idx.max() >= student_logits.shape[-1]):
        raise ValueError(f"topk_idx holds ids outside [0, v={student_logits.shape[-1]})")
    if not T > 0:
        raise ValueError(f"T must be > 0, got {T}")


def topk_kl(student_logits: torch.Tensor, topk_idx: torch.Tensor, topk_logp: torch.Tensor,
            T: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-k tokens, both renormalized over those k.

        p_j = softmax_j(topk_logp_j / T),   q_j = softmax_j(student_logits[topk_idx_j] / T)
        KL  = sum_j p_j (log p_j - log q_j)                       (j = 1..k, per position)

    student_logits "(b, l, v)", topk_idx "(b, l, k)", topk_logp "(b, l, k)". Zero iff the student's
    logits on the k tokens equal the teacher's up to a constant. reduction "mean" (over b l),
    "sum" or "none" -> "(b, l)". Not multiplied by T^2 (do that in the loss if wanted).
    """
    _check_kl_args(student_logits, topk_idx, topk_logp, T)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    log_q = F.log_softmax(student_logits.gather(-1, topk_idx.long()) / T, dim=-1)
    log_p = F.log_softmax(topk_logp.to(log_q.dtype) / T, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean() if reduction == "mean" else kl.sum() if reduction == "sum" else kl


def topk_kl_ref(student_logits: torch.Tensor, topk_idx: torch.Tensor, topk_logp: torch.Tensor,
                T: float = 1.0) -> torch.Tensor:
    """Slow twin of `topk_kl` (reduction "mean"): one position at a time, softmax written out."""
    _check_kl_args(student_logits, topk_idx, topk_logp, T)
    b, l, _ = topk_idx.shape
    total = student_logits.new_zeros(())
    for bi in range(b):
        for t in range(l):
            s = torch.stack([student_logits[bi, t, int(v)] for v in topk_idx[bi, t]]) / T
            a = topk_logp[bi, t].to(s.dtype) / T
            p = torch.exp(a - a.max()) / torch.exp(a - a.max()).sum()
            q = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            total = total + (p * (torch.log(p) - torch.log(q))).sum()
    return total / (b * l)
