"""Atomic training checkpoints.

A checkpoint is a directory holding
    model.safetensors  the model's state_dict (tied/shared tensors stored once, see `_dedup`)
    optimizer.pt       the optimizer's state_dict (torch.save)
    config.json        the run config (its "model" section rebuilds the LM)
    state.json         {"step", "rng", ...extra such as "metrics", "tokens", "elapsed_s"}

`save_checkpoint` writes everything into a sibling `<dir>.tmp-XXXX` and renames it into place
only when complete, so a crash at any point leaves either the previous checkpoint or the new
one, never a half-written directory under the checkpoint's name. Leftover `.tmp-`/`.old-`
directories from a killed process are ignored by `latest_checkpoint` and removed by
`clean_partial`.

Runs keep their checkpoints as `<out_dir>/checkpoints/step_0000300/`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def save_checkpoint(
    dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    config: dict,
    extra: dict | None = None,
) -> Path:
    """Write a complete checkpoint to `dir` atomically (build in `<dir>.tmp-XXXX`, then rename).

    An existing `dir` is replaced. `extra` entries (e.g. metrics) go into state.json beside step and rng.
    """
    final = Path(dir)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    clash = {"step", "rng"} & set(extra)
    if clash:
        raise ValueError(f"extra must not contain the reserved keys {sorted(clash)}")
    tensors, aliases = _dedup(model.state_dict())
    state = {"step": int(step), "rng": get_rng_state(), **extra}
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=parent))
    try:
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "aliases": json.dumps(aliases)})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
        _fsync_write(tmp / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=False, default=str))
        _fsync_write(tmp / STATE_FILE, json.dumps(state, default=_json_default))
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
    """Complete checkpoints `step_XXXXXXX/` under root, sorted by step (partial `.tmp-` dirs ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir itself, or the latest one under a run dir (`<run>/checkpoints/`) or a checkpoints dir."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if (path / MODEL_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
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


def read_config(dir: str | os.PathLike) -> dict:
    dir = Path(dir)
    if not dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {dir}")
    return json.loads(_need(dir, CONFIG_FILE).read_text())


def read_state(dir: str | os.PathLike) -> dict:
    dir = Path(dir)
    if not dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {dir}")
    return json.loads(_need(dir, STATE_FILE).read_text())


def load_state_dict(dir: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The saved state_dict with tied names restored (aliases point at the same tensor)."""
    path = _need(Path(dir), MODEL_FILE)
    sd = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        for k in f.keys():
            sd[k] = f.get_tensor(k)
    for name, target in json.loads(meta.get("aliases", "{}")).items():
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
) -> dict:
    """Restore what is asked for from a checkpoint dir and say what was restored.

    Returns {"path", "step", "config", "state", "restored": [...]} plus "state_dict" when no model
    was given. Missing dir/files raise FileNotFoundError; a shape mismatch raises ValueError naming
    the tensor.
    """
    dir = Path(dir)
    if not dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {dir}")
    config = read_config(dir)
    state = read_state(dir)
    out = {"path": dir, "step": int(state["step"]), "config": config, "state": state, "restored": []}
    sd = load_state_dict(dir, map_location)
    if model is None:
        out["state_dict"] = sd
    else:
        check_state_dict(model, sd, f"checkpoint {dir}")
        model.load_state_dict(sd, strict=True)
        out["restored"].append("model")
    if optimizer is not None:
        opt_sd = torch.load(_need(dir, OPTIM_FILE), map_location="cpu", weights_only=True)
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


def load_model(dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the LM from config.json and load its weights (eval mode). `dir` may be a run dir."""
    from transmamba.models.lm import LM, LMConfig

    dir = resolve_checkpoint(dir)
    cfg = LMConfig.from_dict(model_config_dict(read_config(dir)))
    model = LM(cfg)
    load_checkpoint(dir, model)
    return model.to(device).eval()
