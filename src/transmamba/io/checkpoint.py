"""Atomic, checksummed training checkpoints (a leaf: torch, safetensors, numpy and the stdlib only).

A checkpoint is a directory holding
    model.safetensors  the model's state_dict (tied/shared tensors stored once, see `_dedup`)
    optimizer.pt       the optimizer's state_dict (torch.save), when an optimizer was given
    config.json        the run config (its "model" section rebuilds the LM, see transmamba.hf.student)
    state.json         {"step", "rng", "checksums", ...extra such as "metrics", "tokens", "elapsed_s"}
    checksums.json     written last: size and sha256 of every other file, and a sha256 of its own
                       content ("manifest_sha256"), so a damaged manifest is detected too

`save_checkpoint` writes everything through `transmamba.io.files.atomic_directory` (a temporary
sibling `.<dir>.tmp-<pid>-<hex>`, checksums.json last, renamed into place only when complete), so
a crash at any point leaves either the previous checkpoint or the new one, never a half-written
directory under the checkpoint's name. Temporaries left by a killed process are ignored by
`latest_checkpoint` and removed by `clean_partial` (with those of the earlier `<dir>.tmp-XXXX` scheme).
The manifest and its check are `transmamba.io.manifest`'s, shared by every saved model. state.json's
"rng" is whatever the caller gave (the engine's `transmamba.training.rng` state): this file does not
know what it holds. It refuses a model (or optimizer state) holding NaN/Inf, naming the tensor, so a
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

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from transmamba.io.files import atomic_directory, remove_stale_in
from transmamba.io.manifest import (HASH, MANIFEST_FILE, CheckpointCorruptError, file_digest, read_manifest,
                                    verify_manifest, write_manifest)
from transmamba.io.manifest import corrupt as _corrupt

__all__ = [
    "MODEL_FILE", "OPTIM_FILE", "CONFIG_FILE", "STATE_FILE", "MANIFEST_FILE", "HASH",
    "CheckpointCorruptError", "CheckpointSkippedWarning", "UnverifiedCheckpointWarning", "NonFiniteTensorError",
    "step_dir_name", "file_digest", "save_checkpoint", "verify_checkpoint",
    "read_manifest", "list_checkpoints", "latest_checkpoint", "resolve_checkpoint", "clean_partial",
    "prune_checkpoints", "read_config", "read_state", "load_state_dict", "check_state_dict", "load_checkpoint",
    "write_manifest", "json_default",
]

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
_RESERVED = ("step", "rng", "checksums")
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


# ---------------------------------------------------------------------------------------------
# checksums


def verify_checkpoint(dir: str | os.PathLike, files: list[str] | tuple[str, ...] | None = None) -> bool:
    """`transmamba.io.manifest.verify_manifest` for a checkpoint: True when verified; False for a
    checkpoint written before checksums (warned with UnverifiedCheckpointWarning, loaded as it is),
    unless its state.json says it has a manifest (then CheckpointCorruptError: it was deleted)."""
    dir = Path(dir)
    if verify_manifest(dir, files):
        return True
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
    """Write a complete checkpoint to `dir` atomically (`transmamba.io.files.atomic_directory`:
    built in a temporary sibling, checksums.json written last, then renamed into place).

    An existing `dir` is replaced. `extra` entries (e.g. metrics) go into state.json beside step and
    rng (`rng`: the random-number state the caller wants resumed, e.g. the engine's
    `transmamba.training.rng.get_rng_state()`, stored as given; None when not given). NaN/Inf in
    the model's tensors or the optimizer state raise NonFiniteTensorError naming the first such
    tensor, before anything is written.
    """
    final = Path(dir)
    extra = dict(extra or {})
    clash = set(_RESERVED) & set(extra)
    if clash:
        raise ValueError(f"extra must not contain the reserved keys {sorted(clash)}")
    tensors, aliases = _dedup(model.state_dict())
    _check_finite(tensors, optimizer, model, final)
    state = {"step": int(step), "rng": rng, "checksums": MANIFEST_FILE, **extra}
    with atomic_directory(final, replace=True, manifest=True) as tmp:
        config_text = json.dumps(config, indent=2, sort_keys=False, default=str)
        meta = {"format": "pt", "aliases": json.dumps(aliases), "config": config_text}  # config.json, kept with the weights
        save_file(tensors, str(tmp / MODEL_FILE), metadata=meta)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
        (tmp / CONFIG_FILE).write_text(config_text)
        (tmp / STATE_FILE).write_text(json.dumps(state, default=json_default))
    return final


def json_default(o):
    """`default=` for json.dumps of state.json: one-element tensors, numpy scalars and paths."""
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
    """Remove the leftovers of interrupted saves under root (the temporaries of writers that are
    gone, `transmamba.io.files.remove_stale_in`; and `step_X.tmp-*` / `step_X.old-*` directories of
    the scheme before it); returns what was removed."""
    root = Path(root)
    removed = remove_stale_in(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and not p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
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
    return out
