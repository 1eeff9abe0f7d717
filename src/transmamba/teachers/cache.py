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

Under torchrun (torch.distributed initialised, world W > 1) every rank builds its share: rank 0
decides (an existing cache is kept, other settings refused) and makes the temporary directory and
the full-size files, each rank computes the batches j (windows j*B..j*B+B-1, B = batch_size) with
j % W == its rank and writes them at their own offsets of those files (`os.pwrite`: byte ranges,
not pages, so ranks on other hosts sharing the directory cannot overwrite each other), and rank 0
writes starts.npy and meta.json and renames the directory once every rank has written and fsynced
its rows; every rank then returns the path and reads the whole cache. Whole batches, not single
windows, go to a rank so that every window is computed in the same batch as in one process: the
cache is byte-identical to the one-process build. A rank's failure (a non-finite teacher output
included) is raised on every rank and nothing is published; the directory must be on a filesystem
that every rank sees (refused by name otherwise).
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
import torch.distributed as dist
from tqdm.auto import tqdm

from transmamba.io.files import atomic_dir, remove_stale_tmp
from transmamba.ops.topk_kl import topk_kl, topk_kl_ref  # noqa: F401  (the KL lives in ops/; imported from here too)

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
    raises FileExistsError unless `overwrite`. Under torchrun the ranks share the work (module doc):
    through the process group that is up, or, when none is (WORLD_SIZE > 1 set by the launcher), a
    gloo group started for the build and destroyed before returning (the engine starts its own later).
    """
    own = _join_ranks()
    try:
        return _build(model, ids, out_dir, seq_len=seq_len, n_windows=n_windows, top_k=top_k,
                      hidden_layers=hidden_layers, batch_size=batch_size, hidden_dtype=hidden_dtype,
                      overwrite=overwrite, progress=progress)
    finally:
        if own:
            dist.destroy_process_group()


def _build(model, ids, out_dir, *, seq_len, n_windows, top_k, hidden_layers, batch_size, hidden_dtype,
           overwrite, progress) -> Path:
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
    world, rank = _world()
    meta = {"format": FORMAT_VERSION, "n_windows": n_windows, "seq_len": seq_len, "top_k": top_k,
            "hidden_layers": layers, "hidden_dtype": hidden_dtype, "d_model": config.hidden_size,
            "vocab": vocab, "n_layers": n_layers, "ids_sha1": _fingerprint_ids(ids),
            "teacher": _fingerprint_model(model),
            "teacher_name": str(getattr(config, "name_or_path", "") or "")}
    n, d = n_windows, config.hidden_size
    shapes = {"tokens.npy": ((n, seq_len + 1), np.int32), "topk_idx.npy": ((n, seq_len, top_k), np.int32),
              "topk_logp.npy": ((n, seq_len, top_k), np.float32),
              **{f"hidden_{i}.npy": ((n, seq_len, d), np_dtype) for i in layers}}

    # rank 0 decides and makes the temporary directory with full-size files; the others follow
    plan, tmp = None, None
    if rank == 0:
        try:
            plan, tmp = _plan(out, meta, overwrite)
            if plan == "build":
                for name, (shape, dt) in shapes.items():
                    a = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dt, shape=shape)
                    if name == "tokens.npy":
                        a[:] = np.asarray(ids[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
                    a.flush()
                    del a
        except Exception as e:  # noqa: BLE001  (raised below on every rank)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            plan, tmp = e, None
    if world > 1:
        box = [plan if not isinstance(plan, Exception) else ("error", type(plan).__name__, str(plan)), tmp]
        dist.broadcast_object_list(box, src=0)
        plan, tmp = box
        if isinstance(plan, tuple):
            plan = (FileExistsError if plan[1] == "FileExistsError" else RuntimeError)(plan[2])
    if isinstance(plan, Exception):
        raise plan
    if plan == "keep":
        return out

    err, files = None, {}
    try:
        if not tmp.is_dir():
            raise FileNotFoundError(f"teacher cache: rank {rank} does not see the temporary directory {tmp} that "
                                    f"rank 0 made; the cache directory must be on a filesystem shared by all ranks")
        try:
            for name in shapes:
                files[name] = _Rows(tmp / name)
            tokens = np.load(tmp / "tokens.npy", mmap_mode="r")
            device = next(model.parameters()).device
            mine = [s for j, s in enumerate(range(0, n, batch_size)) if j % world == rank]
            with torch.inference_mode(), tqdm(total=sum(min(batch_size, n - s) for s in mine), unit="win",
                                              desc="teacher cache", disable=not progress or rank != 0) as bar:
                for s in mine:
                    e = min(s + batch_size, n)
                    x = torch.from_numpy(np.asarray(tokens[s:e, :-1], dtype=np.int64)).to(device)
                    o = model(input_ids=x, output_hidden_states=bool(layers), use_cache=False)
                    logp = torch.log_softmax(o.logits.float(), dim=-1)
                    where = f"teacher {meta['teacher_name'] or config.model_type!r}, windows {s}..{e - 1}"
                    if not bool(torch.isfinite(logp).all()):
                        raise FloatingPointError(f"the teacher's logits are not finite ({where}); nothing is cached")
                    v, i = logp.topk(top_k, dim=-1)
                    rows = {"topk_logp.npy": v.cpu().numpy(), "topk_idx.npy": i.to(torch.int32).cpu().numpy()}
                    for li in layers:
                        h = o.hidden_states[li].float().to(torch_dtype)
                        if not bool(torch.isfinite(h).all()):
                            raise FloatingPointError(f"hidden_states[{li}] is not finite in {hidden_dtype} ({where}); "
                                                     f"nothing is cached")
                        rows[f"hidden_{li}.npy"] = (h.view(torch.int16) if hidden_dtype == "bfloat16" else h).cpu().numpy()
                    for name, r in rows.items():  # written once the whole batch is checked
                        files[name].write(s, r.astype(shapes[name][1], copy=False))
                    del o, logp
                    bar.update(e - s)
            for f in files.values():
                f.fsync()
            del tokens
        finally:
            for f in files.values():
                f.close()
    except Exception as e:  # noqa: BLE001  (every rank learns of it below)
        err = e
    errors = [err]
    if world > 1:
        errors = [None] * world
        dist.all_gather_object(errors, None if err is None else (type(err).__name__, str(err)))
    bad = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
    try:
        if bad is not None:
            if err is not None:
                raise err
            r, (kind, msg) = bad
            raise (FloatingPointError if kind == "FloatingPointError" else RuntimeError)(f"rank {r}: {msg}")
        if rank == 0:
            np.save(tmp / "starts.npy", starts)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if world > 1:
            dist.barrier()  # the cache is in place (or gone) before any rank goes on
    return out


_GROUPS_MADE = [0]  # builds that made their own group in this process (the same count on every rank)


def _join_ranks() -> bool:
    """Under a launcher (WORLD_SIZE > 1) with no process group up: start a gloo group for the build, its
    keys under a prefix of their own in the launcher's store (a later env:// group, the engine's,
    must not find this one's addresses there). True when it made one."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    store, rank, world = next(dist.rendezvous("env://"))
    _GROUPS_MADE[0] += 1
    dist.init_process_group("gloo", store=dist.PrefixStore(f"transmamba_teacher_cache_{_GROUPS_MADE[0]}", store),
                            rank=rank, world_size=world)
    return True


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _plan(out: Path, meta: dict, overwrite: bool) -> tuple[str, Path | None]:
    """("keep", None) for a complete cache of the same settings at `out`, else ("build", fresh temporary
    directory); FileExistsError for anything else at `out` unless `overwrite`."""
    remove_stale_tmp(out)  # temporaries of a build that was killed
    if out.exists():
        old = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else None
        if old is not None and all(old.get(k) == v for k, v in meta.items() if k != "teacher_name"):
            return "keep", None
        if not overwrite:
            what = "a teacher cache built with other settings" if old else "something that is no teacher cache"
            raise FileExistsError(f"{out} holds {what}; pass overwrite=True or another out_dir")
    return "build", atomic_dir(out)


class _Rows:
    """Writes whole leading-axis rows of an existing .npy file at their byte offsets (os.pwrite)."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            self.offset = f.tell()
        self.row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        self.path, self.fd = path, os.open(path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows).data.cast("B")
        pos, done = self.offset + start * self.row, 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], pos + done)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


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
