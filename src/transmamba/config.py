"""YAML run configs with dotted command-line overrides.

A config is a nested dict loaded from YAML (e.g. `configs/lm/transmamba.yaml`). A file may name a
`base:` file (path relative to itself) whose values it overrides, so sibling configs can share one
training recipe. Overrides come from the command line as `--section.key value` (or
`--section.key=value`); values are parsed by YAML, so `3e-4`, `4`, `true`, `[1, 2]` and
`{name: fixed, P: 64}` come out as float, int, bool, list and dict.

Every key, in a file or an override, must already exist in the defaults (or the base file):
a typo raises ValueError naming the key, instead of being silently ignored.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml


def parse_value(text: str) -> Any:
    """Parse one override value with YAML ("3e-4" -> 0.0003, "true" -> True, "[1,2]" -> [1, 2])."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # PyYAML follows YAML 1.1, where "3e-4" (no dot) is a string: accept it as the float it means.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(argv: Iterable[str]) -> list[tuple[str, Any]]:
    """["--train.lr", "3e-4", "--model.n_layers=4"] -> [("train.lr", 3e-4), ("model.n_layers", 4)]."""
    argv = list(argv)
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ValueError(f"expected an override '--key value', got {tok!r}")
        key = tok[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2
                                      and not _is_number(argv[i + 1])):
                raise ValueError(f"override --{key} has no value (use --{key} VALUE)")
            text = argv[i + 1]
            i += 2
        out.append((key.replace("-", "_"), parse_value(text)))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _unknown(key: str, known: Iterable[str], where: str) -> ValueError:
    known = sorted(known)
    hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    msg = f"unknown config key {key!r}"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    msg += f"; known keys {where}: {', '.join(known) if known else '(none)'}"
    return ValueError(msg)


def set_dotted(cfg: dict, key: str, value: Any, *, strict: bool = True) -> None:
    """cfg["a"]["b"] = value for key "a.b"; with strict, every part of the key must already exist."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[: depth + 1])
        if part not in node:
            if strict:
                raise _unknown(prefix, node.keys(), _where(parts[:depth]))
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ValueError(f"config key {prefix!r} holds a value, not a section, so {key!r} is not a key")
        node = node[part]
    if strict and parts[-1] not in node:
        raise _unknown(key, node.keys(), _where(parts[:-1]))
    node[parts[-1]] = value


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _where(parts: list[str]) -> str:
    return f"under {'.'.join(parts)!r}" if parts else "at the top level"


def merge(base: dict, update: dict, *, strict: bool = True, _prefix: str = "") -> dict:
    """A deep copy of `base` with `update` merged in; with strict, update's keys must exist in base.

    Sections (dicts) merge key by key; any other value replaces. A dict-valued leaf of `base` that
    `update` sets to a scalar (e.g. a schedule given as a name) is replaced whole.
    """
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{_prefix}{k}"
        if k not in out:
            if strict:
                raise _unknown(key, out.keys(), _where(_prefix.rstrip(".").split(".") if _prefix else []))
            out[k] = copy.deepcopy(v)
        elif isinstance(out[k], dict) and isinstance(v, dict) and _is_section(out[k]):
            out[k] = merge(out[k], v, strict=strict, _prefix=f"{key}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_section(d: dict) -> bool:
    """A dict with a "name" key is a value (e.g. a schedule spec), replaced whole rather than merged."""
    return "name" not in d


def read_yaml(path: str | Path) -> dict:
    """Read one YAML file, following its `base:` chain (each path relative to its own file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = merge(read_yaml(path.parent / base), data, strict=False)
    return data


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | dict | None = None,
    defaults: dict | None = None,
) -> dict:
    """defaults <- YAML file (with its `base:` chain) <- overrides, checking every key.

    overrides: argv-style ["--train.lr", "3e-4"] or a dict {"train.lr": 3e-4}.
    Without `defaults` the file itself defines the known keys for the overrides.
    """
    cfg = copy.deepcopy(defaults) if defaults is not None else {}
    if path is not None:
        data = read_yaml(path)
        cfg = merge(cfg, data, strict=defaults is not None) if defaults is not None else data
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: Iterable[str] | dict | None) -> dict:
    """A copy of cfg with dotted overrides applied; unknown keys raise ValueError naming the key."""
    cfg = copy.deepcopy(cfg)
    if overrides is None:
        return cfg
    pairs = list(overrides.items()) if isinstance(overrides, dict) else parse_overrides(overrides)
    for key, value in pairs:
        set_dotted(cfg, key, value, strict=True)
    return cfg


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
