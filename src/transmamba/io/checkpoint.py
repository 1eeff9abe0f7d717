"""Atomic, checksummed training checkpoints (a leaf: torch, safetensors, numpy and the stdlib only).

A checkpoint is a directory holding
    model.safetensors  the model's state_dict (tied/shared tensors stored once, see `_dedup`)
    optimizer.pt       the optimizer's state_dict (torch.save), when an optimizer was given
    config.json        the run config (its "model" section rebuilds the LM, see transmamba.hf.student)
    state.json         {"step", "rng", "checksums", ...extra such as "metrics", "tokens", "elapsed_s"}
    checksums.json     written last: size and sha256 of every other file, and a sha256 of its own
                       content ("manifest_sha256"), so a damaged manifest is detected too

`save_checkpoint` writes everything into a sibling `<dir>.tmp-XXXX` and renames it into place
only when complete, so a crash at any point leaves either the previous checkpoint or the new
one, never a half-written directory under the checkpoint's name. Leftover `.tmp-`/`.old-`
directories from a killed process are ignored by `latest_checkpoint` and removed by
`clean_partial`. It refuses a model (or optimizer state) holding NaN/Inf, naming the tensor, so a
diverged run never overwrites good checkpoints with a NaN one.

Integrity: `read_config`, `read_state`, `load_state_dict` and `load_checkpoint` check the files
they read against checksums.json (streamed sha256) and raise `CheckpointCorruptError` (a
ValueError) naming the file and the checkpoint on a truncated, bit-flipped or unparsable file.
`latest_checkpoint` verifies every file and skips a corrupt checkpoint with a
`CheckpointSkippedWarning` naming it and the damaged file, falling back to the newest intact one;
when every checkpoint is corrupt it raises instead of pretending there is none. Checkpoints
written before checksums existed (no checksums.json, and no "checksums" entry in state.json) load
unverified with an `UnverifiedCheckpointWarning`.

The run config is also recorded inside model.safetensors (metadata "config", the text of
config.json), so config.json cannot be edited apart from the weights: `read_config` compares the
two and raises CheckpointCorruptError naming the first differing key (e.g. model.d_model), even
when checksums.json was re-sealed after the edit.

Runs keep their checkpoints as `<out_dir>/checkpoints/step_0000300/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "MODEL_FILE", "OPTIM_FILE", "CONFIG_FILE", "STATE_FILE", "MANIFEST_FILE", "HASH",
    "CheckpointCorruptError", "CheckpointSkippedWarning", "UnverifiedCheckpointWarning", "NonFiniteTensorError",
    "step_dir_name", "get_rng_state", "set_rng_state", "file_digest", "save_checkpoint", "verify_checkpoint",
    "read_manifest", "list_checkpoints", "latest_checkpoint", "resolve_checkpoint", "clean_partial",
    "prune_checkpoints", "read_config", "read_state", "load_state_dict", "check_state_dict", "load_checkpoint",
    "model_config_dict", "write_manifest",
]

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
MANIFEST_FILE = "checksums.json"
HASH = "sha256"
_FILES = (MODEL_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE)  # what save_checkpoint writes (and we load)
_RESERVED = ("step", "rng", "checksums")
_CHUNK = 1 << 20
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointCorruptError(ValueError):
    """A checkpoint file is truncated, altered or unreadable; `.checkpoint` and `.file` name it."""

    def __init__(self, message: str, *, checkpoint: str | os.PathLike | None = None, file: str | None = None):
        super().__init__(message)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.file = file


class NonFiniteTensorError(ValueError):
    """save_checkpoint was given a model or optimizer state holding NaN/Inf; `.tensor` names it."""

    def __init__(self, message: str, *, tensor: str | None = None):
        super().__init__(message)
        self.tensor = tensor


class CheckpointSkippedWarning(UserWarning):
    """latest_checkpoint passed over a corrupt checkpoint (the message names it and the damaged file)."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before checksums existed is loaded without verification."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"

# ---------------------------------------------------------------------------------------------
# RNG state as JSON


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def get_rng_state() -> dict:
    """torch (CPU and every CUDA device), numpy and python RNG states, JSON-serialisable."""
    np_state = np.random.get_state()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `get_rng_state` (CUDA states restored only when this process has the same GPUs)."""
    torch.set_rng_state(_unb64(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


# ---------------------------------------------------------------------------------------------
# weights


def _dedup(state_dict: dict) -> tuple[dict, dict]:
    """Split a state_dict into (tensors safetensors can store, aliases {name: stored name}).

    Tied weights (e.g. lm_head.weight is tok_emb.weight) appear twice in a state_dict with the same
    storage, which safetensors refuses; the second name is kept as an alias of the first. Tensors
    that only partly share storage (views of a fused weight) are cloned.
    """
    tensors, aliases, by_view, storages = {}, {}, {}, set()
    for name, t in state_dict.items():
        t = t.detach()
        if t.device.type != "meta" and t.numel() > 0:
            ptr = t.untyped_storage().data_ptr()
            view = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
            if view in by_view:
                aliases[name] = by_view[view]
                continue
            by_view[view] = name
            shared = ptr in storages
            storages.add(ptr)
        else:
            shared = False
        t = t.to("cpu")
        tensors[name] = t.clone().contiguous() if shared or not t.is_contiguous() else t
    # a CPU tensor that was not cloned still shares storage with the model: safetensors only reads it
    return tensors, aliases


def _fsync_write(path: Path, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



# ---------------------------------------------------------------------------------------------
# checksums


def file_digest(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _manifest_digest(body: dict) -> str:
    return hashlib.new(HASH, json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_manifest(dir: Path, names: list[str]) -> None:
    files = {n: {"size": (dir / n).stat().st_size, HASH: file_digest(dir / n)} for n in names}
    body = {"format": 1, "algorithm": HASH, "files": files}
    _fsync_write(dir / MANIFEST_FILE, json.dumps({**body, "manifest_sha256": _manifest_digest(body)}, indent=1))


def write_manifest(dir: str | os.PathLike, names: list[str]) -> None:
    """Write checksums.json for the files `names` of `dir` (what verify_checkpoint checks)."""
    _write_manifest(Path(dir), list(names))


def _corrupt(dir: Path, file: str, problem: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"checkpoint {dir} is corrupt: {file} {problem}", checkpoint=dir, file=file)


def read_manifest(dir: str | os.PathLike) -> dict | None:
    """checksums.json, checked against its own digest; None for a checkpoint written before checksums."""
    dir = Path(dir)
    path = dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(dir, MANIFEST_FILE, f"is not valid JSON ({e})") from None
    ok = (isinstance(data, dict) and isinstance(data.get("files"), dict)
          and all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get(HASH), str)
                  for v in data["files"].values()))
    if not ok:
        raise _corrupt(dir, MANIFEST_FILE, "does not have the layout {files: {name: {size, sha256}}}")
    if data.get("algorithm") != HASH:
        raise _corrupt(dir, MANIFEST_FILE, f"names the hash {data.get('algorithm')!r}, expected {HASH!r}")
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    if data.get("manifest_sha256") != _manifest_digest(body):
        raise _corrupt(dir, MANIFEST_FILE, "does not match its own checksum (manifest_sha256): it was altered")
    return data


def verify_checkpoint(dir: str | os.PathLike, files: list[str] | tuple[str, ...] | None = None) -> bool:
    """Check `files` (default: every file checksums.json lists) of a checkpoint against checksums.json.

    True when verified; False for a checkpoint written before checksums (warned, loaded as it is).
    Raises CheckpointCorruptError naming the checkpoint and the file on a size or checksum mismatch
    (truncation, bit flip), a damaged checksums.json, or a checkpoint file it does not cover;
    FileNotFoundError when a listed file is gone. A requested file that was never saved (e.g.
    optimizer.pt of a model-only checkpoint) is left to the caller, which reports it missing.
    """
    dir = Path(dir)
    manifest = read_manifest(dir)
    if manifest is None:
        state = dir / STATE_FILE
        if state.is_file():
            try:
                marker = json.loads(state.read_bytes()).get("checksums")
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                marker = None  # reported as unparsable by read_state
            if marker:
                raise _corrupt(dir, MANIFEST_FILE, f"is missing, though {STATE_FILE} says the checkpoint has one")
        warnings.warn(f"checkpoint {dir} has no {MANIFEST_FILE} (written before checksums): loading it unverified",
                      UnverifiedCheckpointWarning, stacklevel=3)
        return False
    listed = manifest["files"]
    for name in _FILES:
        if name not in listed and (dir / name).exists():
            raise _corrupt(dir, name, f"is not covered by {MANIFEST_FILE} (added after the checkpoint was written)")
    for name in listed if files is None else files:
        if name not in listed:
            continue
        path = dir / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {dir} is missing {name} (listed in {MANIFEST_FILE})")
        want = listed[name]
        size = path.stat().st_size
        if size != want["size"]:
            raise _corrupt(dir, name, f"has {size} bytes where {MANIFEST_FILE} records {want['size']} "
                                      f"({'truncated' if size < want['size'] else 'grown'} after it was written)")
        got = file_digest(path)
        if got != want[HASH]:
            raise _corrupt(dir, name, f"does not match its {HASH} checksum (recorded {want[HASH][:12]}..., "
                                      f"found {got[:12]}...): its content changed after it was written")
    return True


# ---------------------------------------------------------------------------------------------
# saving


def first_nonfinite(named: list[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the first floating tensor holding NaN/Inf (one device sync per device, not per tensor)."""
    named = [(n, t) for n, t in named
             if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
             and t.numel() and t.device.type != "meta"]
    by_device: dict = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    bad = []
    for dev, idx in by_device.items():
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in idx]).tolist()
        bad += [i for i, ok in zip(idx, flags) if not ok]
    return None if not bad else named[min(bad)][0]


def _nonfinite_error(where: str, name: str, t: torch.Tensor, final: Path) -> NonFiniteTensorError:
    n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return NonFiniteTensorError(
        f"refusing to save checkpoint {final}: {where} {name!r} {tuple(t.shape)} holds {n_nan} NaN and {n_inf} "
        f"Inf values (the model diverged); earlier checkpoints are left as they are", tensor=name)


def _check_finite(tensors: dict, optimizer, model: torch.nn.Module, final: Path) -> None:
    name = first_nonfinite(list(tensors.items()))
    if name is not None:
        raise _nonfinite_error("model tensor", name, tensors[name], final)
    if optimizer is None:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    entries = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, t in optimizer.state.get(p, {}).items():
                entries.append((f"{key} of parameter {names.get(id(p), '?')}", t))
    name = first_nonfinite(entries)
    if name is not None:
        raise _nonfinite_error("optimizer state", name, dict(entries)[name], final)


def save_checkpoint(
    dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    config: dict,
    extra: dict | None = None,
    *,
    rng: dict | None = None,
) -> Path:
    """Write a complete checkpoint to `dir` atomically (build in `<dir>.tmp-XXXX`, then rename).

    An existing `dir` is replaced. `extra` entries (e.g. metrics) go into state.json beside step and
    rng (`rng`: a `get_rng_state()` taken earlier, default: now). NaN/Inf in the model's tensors or the optimizer state raise NonFiniteTensorError naming the
    first such tensor, before anything is written.
    """
    final = Path(dir)
    parent = final.parent
    extra = dict(extra or {})
    clash = set(_RESERVED) & set(extra)
    if clash:
        raise ValueError(f"extra must not contain the reserved keys {sorted(clash)}")
    tensors, aliases = _dedup(model.state_dict())
    _check_finite(tensors, optimizer, model, final)
    state = {"step": int(step), "rng": get_rng_state() if rng is None else rng, "checksums": MANIFEST_FILE, **extra}
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=parent))
    try:
        config_text = json.dumps(config, indent=2, sort_keys=False, default=str)
        meta = {"format": "pt", "aliases": json.dumps(aliases), "config": config_text}  # config.json, kept with the weights
        save_file(tensors, str(tmp / MODEL_FILE), metadata=meta)
        written = [MODEL_FILE]
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
            written.append(OPTIM_FILE)
        _fsync_write(tmp / CONFIG_FILE, config_text)
        _fsync_write(tmp / STATE_FILE, json.dumps(state, default=_json_default))
        _write_manifest(tmp, written + [CONFIG_FILE, STATE_FILE])  # last: its presence means complete
        _fsync_dir(tmp)
        if final.exists():
            old = parent / f"{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(o):
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"state.json cannot hold {type(o).__name__}")



# ---------------------------------------------------------------------------------------------
# finding checkpoints


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints `step_XXXXXXX/` under root, sorted by step (partial `.tmp-` dirs ignored).

    Contents are not checked here; `latest_checkpoint` verifies them.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        # a sharded (FSDP) checkpoint holds its tensors under dcp/ (transmamba.training.fsdp)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and ((p / MODEL_FILE).is_file() or (p / "dcp").is_dir()):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | os.PathLike, verify: bool = True) -> Path | None:
    """The newest intact checkpoint under root, or None when there is none at all.

    With verify (the default) every file of each candidate is checked, newest first; a corrupt one
    is skipped with a CheckpointSkippedWarning naming it and the damaged file. If every checkpoint
    is corrupt, CheckpointCorruptError (naming the newest one's damaged file) is raised rather than
    returning None, so a resume never silently restarts from scratch over a damaged run.
    """
    ckpts = list_checkpoints(root)
    if not verify:
        return ckpts[-1][1] if ckpts else None
    skipped: list[tuple[Path, Exception]] = []
    for _, path in reversed(ckpts):
        try:
            verify_checkpoint(path)
        except (CheckpointCorruptError, FileNotFoundError) as e:
            skipped.append((path, e))
            continue
        for bad, e in skipped:
            warnings.warn(f"skipping corrupt checkpoint {bad.name}, using {path.name} instead: {e}",
                          CheckpointSkippedWarning, stacklevel=2)
        return path
    if not skipped:
        return None
    bad, e = skipped[0]
    older = f" (and the {len(skipped) - 1} older ones)" if len(skipped) > 1 else ""
    raise CheckpointCorruptError(f"no intact checkpoint in {root}: the newest{older} is damaged: {e}",
                                 checkpoint=bad, file=getattr(e, "file", None)) from e


def resolve_checkpoint(path: str | os.PathLike, verify: bool = True) -> Path:
    """A checkpoint dir itself, or the newest intact one under a run dir (`<run>/checkpoints/`) or a
    checkpoints dir (see `latest_checkpoint`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if (path / MODEL_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root, verify=verify)
        if found is not None:
            return found
    raise FileNotFoundError(f"no checkpoint ({MODEL_FILE} + {STATE_FILE}) in {path} or {path / 'checkpoints'}")


def clean_partial(root: str | os.PathLike) -> list[Path]:
    """Remove `.tmp-`/`.old-` leftovers of interrupted saves under root; returns what was removed."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints under root (keep <= 0: keep all)."""
    if keep <= 0:
        return []
    ckpts = list_checkpoints(root)
    doomed = [p for _, p in ckpts[:-keep]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed



# ---------------------------------------------------------------------------------------------
# loading


def _need(dir: Path, name: str) -> Path:
    p = dir / name
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {dir} is missing {name}")
    return p


def _checkpoint_dir(dir: str | os.PathLike) -> Path:
    dir = Path(dir)
    if not dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {dir}")
    return dir


def _read_json(dir: Path, name: str):
    try:
        return json.loads(_need(dir, name).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(dir, name, f"is not valid JSON ({e})") from None


def _differing_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".") or "(the whole config)"]


def _dotted(d, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _check_config_matches_weights(dir: Path, config) -> None:
    """config.json against the copy recorded in model.safetensors' metadata when it has one
    (checkpoints with checksums.json); CheckpointCorruptError naming the first differing key."""
    path = dir / MODEL_FILE
    if not path.is_file() or not (dir / MANIFEST_FILE).is_file():
        return  # no weights file (reported by its reader), or a checkpoint from before checksums
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            text = (f.metadata() or {}).get("config")
        recorded = None if text is None else json.loads(text)
    except MemoryError:
        raise
    except Exception:  # a damaged header: reported when the weights are read
        return
    if recorded is None:
        return  # written before the weights recorded their config
    changed = sorted(_differing_keys(recorded, config), key=lambda k: k.startswith("fingerprint."))  # stable
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more key(s))" if len(changed) > 1 else ""
        raise _corrupt(dir, CONFIG_FILE, f"says {key}={_dotted(config, key)!r} but the weights ({MODEL_FILE}) were "
                                         f"written with {key}={_dotted(recorded, key)!r}{more}: the config was "
                                         f"edited after the checkpoint was written")


def read_config(dir: str | os.PathLike, *, verify: bool = True) -> dict:
    """config.json of a checkpoint (checked against checksums.json unless verify=False, and against
    the config recorded in model.safetensors: an edited key is a CheckpointCorruptError naming it)."""
    dir = _checkpoint_dir(dir)
    if verify:
        verify_checkpoint(dir, [CONFIG_FILE])
    config = _read_json(dir, CONFIG_FILE)
    _check_config_matches_weights(dir, config)
    return config


def read_state(dir: str | os.PathLike, *, verify: bool = True) -> dict:
    """state.json of a checkpoint (checked against checksums.json unless verify=False)."""
    dir = _checkpoint_dir(dir)
    if verify:
        verify_checkpoint(dir, [STATE_FILE])
    state = _read_json(dir, STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _corrupt(dir, STATE_FILE, "has no integer 'step'")
    return state


def load_state_dict(dir: str | os.PathLike, device: str | torch.device = "cpu", *, verify: bool = True) -> dict:
    """The saved state_dict with tied names restored (aliases point at the same tensor)."""
    dir = Path(dir)
    path = _need(dir, MODEL_FILE)
    if verify:
        verify_checkpoint(dir, [MODEL_FILE])
    sd = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            for k in f.keys():
                sd[k] = f.get_tensor(k)
        aliases = json.loads(meta.get("aliases", "{}"))
    except MemoryError:
        raise
    except Exception as e:  # safetensors raises its own error types on a damaged file
        raise _corrupt(dir, MODEL_FILE, f"cannot be read ({type(e).__name__}: {e})") from None
    for name, target in aliases.items():
        if target not in sd:
            raise _corrupt(dir, MODEL_FILE, f"aliases {name!r} to {target!r}, which it does not hold")
        sd[name] = sd[target]
    return sd


def check_state_dict(model: torch.nn.Module, sd: dict, source: str = "checkpoint") -> None:
    """Raise ValueError naming the first missing/unexpected tensor or shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing:
        raise ValueError(f"{source} lacks tensor {missing[0]!r} the model needs"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise ValueError(f"{source} has tensor {unexpected[0]!r} the model does not have"
                         + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for k, t in own.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise ValueError(f"shape mismatch for tensor {k!r}: {source} has {tuple(sd[k].shape)}, "
                             f"model expects {tuple(t.shape)}")



def load_checkpoint(
    dir: str | os.PathLike,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = False,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
) -> dict:
    """Restore what is asked for from a checkpoint dir and say what was restored.

    Returns {"path", "step", "config", "state", "restored": [...]} plus "state_dict" when no model
    was given. Missing dir/files raise FileNotFoundError; a shape mismatch raises ValueError naming
    the tensor; a file that fails its checksum raises CheckpointCorruptError naming it (every file
    read is verified first unless verify=False).
    """
    dir = _checkpoint_dir(dir)
    if verify:
        verify_checkpoint(dir, [CONFIG_FILE, STATE_FILE, MODEL_FILE] + ([OPTIM_FILE] if optimizer is not None else []))
    config = read_config(dir, verify=False)
    state = read_state(dir, verify=False)
    out = {"path": dir, "step": int(state["step"]), "config": config, "state": state, "restored": []}
    sd = load_state_dict(dir, map_location, verify=False)
    if model is None:
        out["state_dict"] = sd
    else:
        check_state_dict(model, sd, f"checkpoint {dir}")
        model.load_state_dict(sd, strict=True)
        out["restored"].append("model")
    if optimizer is not None:
        path = _need(dir, OPTIM_FILE)
        try:
            opt_sd = torch.load(path, map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except Exception as e:  # truncated zip, bad pickle, ...
            raise _corrupt(dir, OPTIM_FILE, f"cannot be read ({type(e).__name__}: {e})") from None
        try:
            optimizer.load_state_dict(opt_sd)
        except (ValueError, KeyError) as e:
            raise ValueError(f"optimizer state in {dir} does not fit this optimizer: {e}") from None
        out["restored"].append("optimizer")
    if restore_rng:
        set_rng_state(state["rng"])
        out["restored"].append("rng")
    return out


def model_config_dict(config: dict) -> dict:
    """The LM config inside a run config (its "model" section), or the dict itself if it is one."""
    return config["model"] if isinstance(config.get("model"), dict) else config

