"""What a model directory holds, checked before transformers reads it: no custom code, no pickle,
intact files (a leaf: safetensors, torch and the stdlib only).

- `check_model_dir(path)`: called before every load of a model, config or tokenizer the library
  does (teachers, students, eval teachers, export, GGUF: a `.gguf` path means its folder). A
  directory that asks transformers to run its own Python (`auto_map` or `custom_pipelines` in
  config.json / tokenizer_config.json / the processor configs, a `custom_generate/` folder) is
  refused by name, so transformers never gets to prompt "Do you wish to run the custom code?"; with
  `weights=True`, so is a directory whose weights are only pickle files (`pytorch_model.bin`, ...),
  which can run code when unpickled: transmamba reads safetensors or GGUF only. Every
  `from_pretrained` the library calls also passes `trust_remote_code=False`.
  When the directory has a checksum manifest (`checksums.json`, `transmamba.io.manifest`, which
  every model the library saves carries), `verify_manifest` checks every file it lists and
  refuses a weights or config file it does not cover.
- `safetensors_tensors(dir)`: name -> (shape, file) of the weights, read from the headers only, a
  damaged or missing file refused by name; `first_nonfinite_tensor(dir)` streams the tensors one
  at a time and names the first holding NaN/Inf.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transmamba.io.manifest import verify_manifest

CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
CODE_FIELDS = ("auto_map", "custom_pipelines")  # the fields transformers follows to import a directory's code
CODE_DIRS = ("custom_generate",)  # generate() imports custom_generate/generate.py when code is trusted
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_INDEX = "model.safetensors.index.json"


class UnsafeModelError(ValueError):
    """A model directory asks to run its own code, or keeps its weights as pickle (the CLI prints
    it as one `error:` line, exit 2)."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def model_dir_of(path: str | os.PathLike) -> Path:
    """The directory transformers reads for `path`: itself, or the folder of a `.gguf` file."""
    path = Path(path)
    return path.parent if path.suffix == ".gguf" else path


def refuse_custom_code(dir: str | os.PathLike) -> None:
    """UnsafeModelError naming the field and file when `dir` asks to run its own code (module docstring)."""
    dir = Path(dir)
    for name in CODE_FILES:
        f = dir / name
        if not f.is_file():
            continue
        data = _read_json(f)
        if not isinstance(data, dict):
            raise ValueError(f"{f} does not hold a JSON object (it holds a {type(data).__name__})")
        for field in CODE_FIELDS:
            if field in data:
                raise UnsafeModelError(f"{dir} asks to run its own code ({field} in {name}); "
                                f"transmamba never runs model code")
    for name in CODE_DIRS:
        if (dir / name).exists():
            raise UnsafeModelError(f"{dir} asks to run its own code ({name}/ folder); transmamba never runs model code")


def refuse_pickle_weights(dir: str | os.PathLike) -> None:
    """UnsafeModelError when `dir`'s weights are only pickle files; FileNotFoundError when it has none."""
    dir = Path(dir)
    files = [p.name for p in dir.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in files):
        return
    pickles = sorted(n for n in files if n.endswith(PICKLE_SUFFIXES) and not n.startswith("training_args"))
    if pickles:
        raise UnsafeModelError(f"{dir} holds its weights only as pickle ({', '.join(pickles[:3])}), which can run code "
                        f"when loaded; transmamba reads safetensors or GGUF weights only (re-save the model with "
                        f"save_pretrained(..., safe_serialization=True))")
    raise FileNotFoundError(f"{dir} holds no weights (no *.safetensors file)")


def check_model_dir(path: str | os.PathLike, *, weights: bool = True) -> Path:
    """Everything above, before any transformers call; returns the directory (a `.gguf` file's folder).

    `weights`: also refuse pickle-only or missing weights (False for a config or tokenizer load,
    and for a GGUF file, which holds the weights itself)."""
    gguf = Path(path).suffix == ".gguf"
    dir = model_dir_of(path)
    if not dir.is_dir():
        raise FileNotFoundError(f"model directory {str(dir)!r} does not exist")
    refuse_custom_code(dir)
    verify_manifest(dir)
    if weights and not gguf:
        refuse_pickle_weights(dir)
    return dir


# ------------------------------------------------------------------------------------ safetensors
def weight_files(dir: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory (the shards its index names, or model.safetensors)."""
    dir = Path(dir)
    index = dir / WEIGHTS_INDEX
    if index.is_file():
        data = _read_json(index)
        if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
            raise ValueError(f"{index} has no weight_map")
        names = sorted(set(data["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    for n in names:
        if not (dir / n).is_file():
            raise FileNotFoundError(f"{dir} is missing its weights file {n}")
    return [dir / n for n in names]


def _open(file: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except MemoryError:
        raise
    except Exception as e:  # safetensors raises its own error types on a damaged header
        raise ValueError(f"{file} cannot be read: its safetensors header is damaged or the file is truncated "
                         f"({type(e).__name__}: {e})") from None


def safetensors_tensors(dir: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], Path]]:
    """name -> (shape, file) of every tensor in the directory's safetensors files (headers only)."""
    out = {}
    for file in weight_files(dir):
        with _open(file) as f:
            for k in f.keys():
                out[k] = (tuple(f.get_slice(k).get_shape()), file)
    return out


def first_nonfinite_tensor(dir: str | os.PathLike) -> tuple[str, Path, int, int] | None:
    """(name, file, NaN count, Inf count) of the first floating tensor holding NaN/Inf, else None;
    one tensor in memory at a time."""
    import torch

    for file in weight_files(dir):
        with _open(file) as f:
            for k in f.keys():
                try:
                    t = f.get_tensor(k)
                except MemoryError:
                    raise
                except Exception as e:
                    raise ValueError(f"{file} cannot be read: tensor {k!r} is damaged ({type(e).__name__}: {e})") \
                        from None
                if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
                    return k, file, int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return None
