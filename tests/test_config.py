"""YAML configs and dotted CLI overrides (transmamba.config), and the shipped configs/lm/*.yaml."""

from pathlib import Path

import pytest
import yaml

from transmamba.config import apply_overrides, load_config, parse_overrides, parse_value, read_yaml

ROOT = Path(__file__).resolve().parents[1]
LM_CONFIGS = ROOT / "configs" / "lm"
MAIN = ["transformer", "mamba2", "hybrid", "transmamba"]


@pytest.mark.parametrize("text, value", [
    ("3e-4", 3e-4), ("1.5", 1.5), ("4", 4), ("-2", -2), ("true", True), ("false", False),
    ("[1, 2]", [1, 2]), ("{name: fixed, P: 64}", {"name": "fixed", "P": 64}), ("staggered", "staggered"),
    ("null", None), ("runs/x", "runs/x"),
])
def test_parse_value_types(text, value):
    out = parse_value(text)
    assert out == value and type(out) is type(value)


def test_parse_overrides_forms():
    pairs = parse_overrides(["--train.lr", "3e-4", "--model.n_layers=4", "--train.betas", "[0.9, 0.99]",
                             "--model.schedule", "{name: fixed, P: 64}", "--train.min-lr", "-1"])
    assert pairs == [("train.lr", 3e-4), ("model.n_layers", 4), ("train.betas", [0.9, 0.99]),
                     ("model.schedule", {"name": "fixed", "P": 64}), ("train.min_lr", -1)]


@pytest.mark.parametrize("argv, match", [
    (["--train.lr"], "--train.lr has no value"),
    (["--train.lr", "--model.d_model", "8"], "--train.lr has no value"),
    (["train.lr", "3"], "expected an override"),
])
def test_parse_overrides_errors(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_overrides(argv)


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


DEFAULTS = {"name": "x", "model": {"d_model": 8, "n_layers": 2, "schedule": {"name": "attention"}},
            "train": {"lr": 1e-3, "tokens": 100}}


def test_load_config_file_and_overrides(tmp_path):
    p = _write(tmp_path, "c.yaml", {"model": {"d_model": 16}, "train": {"tokens": 500}})
    cfg = load_config(p, ["--train.lr", "3e-4", "--model.n_layers", "4"], defaults=DEFAULTS)
    assert cfg["model"] == {"d_model": 16, "n_layers": 4, "schedule": {"name": "attention"}}
    assert cfg["train"] == {"lr": 3e-4, "tokens": 500}
    assert DEFAULTS["model"]["d_model"] == 8  # defaults not mutated


def test_schedule_spec_is_replaced_whole(tmp_path):
    p = _write(tmp_path, "c.yaml", {"model": {"schedule": {"name": "fixed", "P": 64}}})
    cfg = load_config(p, ["--model.schedule", "staggered"], defaults=DEFAULTS)
    assert cfg["model"]["schedule"] == "staggered"
    cfg = load_config(p, defaults=DEFAULTS)
    assert cfg["model"]["schedule"] == {"name": "fixed", "P": 64}  # not merged with {"name": "attention"}


@pytest.mark.parametrize("override, key", [
    (["--train.lrr", "1"], "train.lrr"),
    (["--trian.lr", "1"], "trian"),
    (["--model.d_model.x", "1"], "model.d_model"),
])
def test_unknown_override_key_names_it(tmp_path, override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(None, override, defaults=DEFAULTS)


def test_unknown_key_suggests_close_match():
    with pytest.raises(ValueError, match=r"did you mean 'lr'"):
        apply_overrides(DEFAULTS, {"train.lrr": 1})


def test_unknown_key_in_file_names_it(tmp_path):
    p = _write(tmp_path, "c.yaml", {"model": {"d_modle": 16}})
    with pytest.raises(ValueError, match=r"model\.d_modle"):
        load_config(p, defaults=DEFAULTS)


def test_without_defaults_the_file_defines_known_keys(tmp_path):
    p = _write(tmp_path, "c.yaml", {"a": {"b": 1}})
    assert load_config(p, ["--a.b", "2"]) == {"a": {"b": 2}}
    with pytest.raises(ValueError, match=r"a\.c"):
        load_config(p, ["--a.c", "2"])


def test_base_chain(tmp_path):
    _write(tmp_path, "_base.yaml", {"model": {"d_model": 32, "n_layers": 3}, "train": {"lr": 0.5}})
    (tmp_path / "sub").mkdir()
    p = _write(tmp_path / "sub", "child.yaml", {"base": "../_base.yaml", "model": {"n_layers": 6}})
    assert read_yaml(p) == {"model": {"d_model": 32, "n_layers": 6}, "train": {"lr": 0.5}}


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


# ------------------------------------------------------------------------------ shipped configs
def test_lm_configs_load_with_every_key_known():
    from transmamba.recipes.lm import build_config, resolve_config

    names = sorted(p.stem for p in LM_CONFIGS.glob("*.yaml") if not p.stem.startswith("_"))
    assert set(MAIN + ["tiny"]) <= set(names)
    for name in names:
        cfg = resolve_config(build_config(str(LM_CONFIGS / f"{name}.yaml"), []))
        assert cfg["name"] == name and cfg["out_dir"] == f"runs/lm/{name}"


def test_main_lm_configs_compare_at_equal_budget_and_shape():
    from transmamba.recipes.lm import build_config

    cfgs = {n: build_config(str(LM_CONFIGS / f"{n}.yaml"), []) for n in MAIN}
    ref = cfgs["transformer"]
    for name, cfg in cfgs.items():
        assert cfg["model"]["arch"] == name
        assert cfg["train"] == ref["train"], name  # identical budget, batch, seq_len and optimizer
        assert cfg["data"] == ref["data"], name
        for k in ("d_model", "n_layers", "n_heads", "d_state", "head_dim"):
            assert cfg["model"][k] == ref["model"][k], (name, k)
    assert cfgs["transmamba"]["model"]["schedule"] in ("staggered",) or \
        cfgs["transmamba"]["model"]["schedule"]["name"] == "staggered"


def test_main_lm_configs_have_close_parameter_counts():
    lm = pytest.importorskip("transmamba.models.lm")
    import torch

    from transmamba.recipes.lm import build_config

    counts = {}
    for name in MAIN:
        m = dict(build_config(str(LM_CONFIGS / f"{name}.yaml"), [])["model"], vocab_size=8192)
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in lm.LM(lm.LMConfig.from_dict(m)).parameters())
    assert all(10e6 <= n <= 20e6 for n in counts.values()), counts
    assert max(counts.values()) / min(counts.values()) < 1.01, counts


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    from transmamba.config import read_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-3\n  tokens: [1, 2\nmodel: {}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: YAML syntax error at line \d+, column \d+"):
        read_yaml(bad)


def test_check_config_names_key_range_and_value():
    from transmamba.config import TRAIN_RULES, check_config

    check_config({"train": {"lr": 1e-3, "tokens": 1e6, "betas": [0.9, 0.95], "halt_at_step": None}}, TRAIN_RULES)
    with pytest.raises(ValueError, match=r"'train.tokens' must be an integer >= 1, got 0"):
        check_config({"train": {"tokens": 0}}, TRAIN_RULES)
    with pytest.raises(ValueError, match=r"'train.lr' must be a finite number > 0, got inf"):
        check_config({"train": {"lr": float("inf")}}, TRAIN_RULES)
    with pytest.raises(ValueError, match=r"'train.eval_every' must be an integer >= 1, or 0 for off"):
        check_config({"train": {"eval_every": True}}, TRAIN_RULES)
