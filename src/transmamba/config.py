"""YAML run configs with dotted command-line overrides.

A config is a nested dict loaded from YAML (e.g. `configs/lm/transmamba.yaml`). A file may name a
`base:` file (path relative to itself) whose values it overrides, so sibling configs can share one
training recipe. Overrides come from the command line as `--section.key value` (or
`--section.key=value`); values are parsed by YAML, so `3e-4`, `4`, `true`, `[1, 2]` and
`{name: fixed, P: 64}` come out as float, int, bool, list and dict.

Every key, in a file or an override, must already exist in the defaults (or the base file):
a typo raises ValueError naming the key, instead of being silently ignored. A file is refused,
naming it, when it is empty, not UTF-8, not a mapping, repeats a key (the line is named), or
when its `base:` chain names a file twice (a cycle); a section (a mapping in the defaults) given
a value that is not a mapping is refused naming the key.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping repeats a key (YAML 1.2 forbids it; PyYAML keeps the last value silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping repeating a key, naming the key and both lines."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merge keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    line = key_node.start_mark.line + 1
                    err = DuplicateKeyError(None, None, f"duplicate key {key!r} at line {line} (first given at "
                                                        f"line {first.line + 1})", key_node.start_mark)
                    err.key, err.line, err.first_line = key, line, first.line + 1
                    raise err
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """yaml.safe_load refusing duplicate keys (`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def parse_value(text: str) -> Any:
    """Parse one override value with YAML ("3e-4" -> 0.0003, "true" -> True, "[1,2]" -> [1, 2])."""
    try:
        value = safe_load(text)
    except DuplicateKeyError as e:
        raise ValueError(f"override value {text!r}: {e.problem}") from None
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
    if not isinstance(update, dict):
        where = f"config key {_prefix.rstrip('.')!r}" if _prefix else "a config"
        raise ValueError(f"{where} must be a mapping of keys to values, got {_describe(update)}")
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{_prefix}{k}"
        if k in out and isinstance(out[k], dict) and _is_section(out[k]) and out[k] and not isinstance(v, dict):
            keys = list(map(str, out[k]))
            shown = ", ".join(keys[:4]) + (f", ... ({len(keys)} keys)" if len(keys) > 4 else "")
            raise ValueError(f"config key {key!r} is a section (keys {shown}): give it a mapping such as "
                             f"`{k}: {{{keys[0]}: ...}}`, got {_describe(v)}")
        if k not in out:
            if strict:
                raise _unknown(key, out.keys(), _where(_prefix.rstrip(".").split(".") if _prefix else []))
            out[k] = copy.deepcopy(v)
        elif isinstance(out[k], dict) and isinstance(v, dict) and _is_section(out[k]):
            out[k] = merge(out[k], v, strict=strict, _prefix=f"{key}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _describe(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_section(d: dict) -> bool:
    """A dict with a "name" key is a value (e.g. a schedule spec), replaced whole rather than merged."""
    return "name" not in d


def read_yaml(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> dict:
    """Read one YAML file, following its `base:` chain (each path relative to its own file).

    ValueError naming the file for: an empty file (only comments or nothing), bytes that are not
    UTF-8, a YAML syntax error or a repeated key (with the line), a top level that is not a
    mapping, a `base:` that is not a path, and a `base:` chain that comes back to a file (a cycle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    here = path.resolve()
    if here in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(here):], here))
        raise ValueError(f"config file {path}: its `base:` chain is a cycle ({cycle})")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"config file {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line} "
                         f"(offset {e.start}); save it as UTF-8") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        if isinstance(e, DuplicateKeyError):
            raise ValueError(f"config file {path}: {problem}; a key may appear once per mapping") from None
        raise ValueError(f"config file {path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        raise ValueError(f"config file {path} is empty (no keys); a run needs at least its model and train "
                         f"sections (see configs/ for examples)")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {_describe(data)}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ValueError(f"config file {path}: `base:` must be the path of another config file, "
                             f"got {_describe(base)}")
        data = merge(read_yaml(path.parent / base, _chain=(*_chain, here)), data, strict=False)
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


# ------------------------------------------------------------------------------------ validation
class Rule:
    """A check of one config value: `ok(value)` and what it must be (for the error message)."""

    def __init__(self, must_be: str, ok):
        self.must_be, self.ok = must_be, ok

    def __or__(self, other: "Rule") -> "Rule":
        return Rule(f"{self.must_be} or {other.must_be}", lambda v: self.ok(v) or other.ok(v))


def _is_int(v) -> bool:
    """An int, or a float with an integral value (YAML reads 1e6 as a float)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _is_real(v) and v == v and abs(v) != float("inf")


FLOAT32_MAX = 3.4028234663852886e38  # parameters and optimizer state are fp32: an lr beyond this overflows

POSITIVE_INT = Rule("an integer >= 1", lambda v: _is_int(v) and v >= 1)
NONNEG_INT = Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
PERIOD = Rule("an integer >= 1, or 0 for off", lambda v: _is_int(v) and v >= 0)
INT = Rule("an integer", _is_int)
POSITIVE = Rule("a finite number > 0", lambda v: _finite(v) and v > 0)
NONNEG = Rule("a finite number >= 0", lambda v: _finite(v) and v >= 0)
FRACTION = Rule("a number in (0, 1]", lambda v: _finite(v) and 0 < v <= 1)
UNIT = Rule("a number in [0, 1]", lambda v: _finite(v) and 0 <= v <= 1)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
NONE = Rule("null", lambda v: v is None)
BETAS = Rule("a pair [beta1, beta2] of numbers in [0, 1)",
             lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v))


def one_of(*values) -> Rule:
    return Rule("one of " + ", ".join(repr(v) for v in values), lambda v: v in values)


# (key, bound, why): where the key is checked and present (and the bound, when it is a key), the
# key's value must not exceed the bound
UPPER_BOUNDS: tuple[tuple[str, str | float, str], ...] = (
    ("train.min_lr", "train.lr", "the cosine schedule decays from train.lr down to train.min_lr"),
    ("train.lr", FLOAT32_MAX, "the largest float32: weights and AdamW state are fp32, a larger step overflows"),
    ("train.min_lr", FLOAT32_MAX, "the largest float32: weights and AdamW state are fp32, a larger step overflows"),
)


def check_config(cfg: dict, rules: dict[str, Rule]) -> dict:
    """Check each dotted key of `rules` present in cfg; ValueError naming the key, the expected
    type/range and the value given; then the UPPER_BOUNDS of the keys in rules (train.min_lr <=
    train.lr <= 3.4e38). Returns cfg."""
    missing = object()
    for key, rule in rules.items():
        value = get_dotted(cfg, key, missing)
        if value is missing:
            continue
        if not rule.ok(value):
            raise ValueError(f"config key {key!r} must be {rule.must_be}, got {value!r}")
    for key, bound, why in UPPER_BOUNDS:
        if key not in rules or (isinstance(bound, str) and bound not in rules):
            continue
        value = get_dotted(cfg, key, missing)
        limit = get_dotted(cfg, bound, missing) if isinstance(bound, str) else bound
        if value is missing or limit is missing or not (_is_real(value) and _is_real(limit)) or value <= limit:
            continue
        named = f"{bound!r} ({limit!r})" if isinstance(bound, str) else f"{limit:.4g}"
        raise ValueError(f"config key {key!r} ({value!r}) must not exceed {named}: {why}")
    return cfg


# The engine's train-section keys (transmamba.training.engine.ENGINE_DEFAULTS), shared by every recipe.
TRAIN_RULES: dict[str, Rule] = {
    "train.lr": POSITIVE, "train.min_lr": NONNEG, "train.warmup_steps": NONNEG_INT,
    "train.weight_decay": NONNEG, "train.betas": BETAS, "train.eps": POSITIVE, "train.grad_clip": NONNEG,
    "train.grad_accum": POSITIVE_INT, "train.log_every": PERIOD, "train.eval_every": PERIOD,
    "train.ckpt_every": PERIOD, "train.keep_checkpoints": NONNEG_INT, "train.halt_at_step": POSITIVE_INT | NONE,
    "train.amp": one_of("auto", "none", "bf16"), "train.threads": POSITIVE_INT | NONE, "train.progress": BOOL, "train.retain_heap": BOOL,
    "train.compile": BOOL, "train.skip_memory_check": BOOL, "train.tokens": POSITIVE_INT, "train.batch_size": POSITIVE_INT,
    "train.seq_len": POSITIVE_INT, "train.epochs": POSITIVE_INT, "train.max_steps": POSITIVE_INT | NONE,
    "train.seed": INT, "seed": INT,
    "train.parallel": one_of("ddp", "fsdp"), "train.activation_checkpointing": BOOL,
}
