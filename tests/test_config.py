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


# ------------------------------------------------------------------ hostile configs (issue 41, group 1)
class TestHostileConfigsThroughTheCLI:
    """Each bad config is one `error:` line naming the key or file, exit 2, before any work:
    nothing is written (the data loader is replaced so that a case reaching it is seen)."""

    MODEL = {"arch": "transmamba", "vocab_size": 32, "d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 8,
             "d_state": 8, "chunk_size": 8, "max_seq_len": 16, "schedule": {"name": "fixed", "P": 5}}
    TRAIN = {"tokens": 128, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "eval_every": 0,
             "eval_batches": 1, "ckpt_every": 0, "progress": False}

    @pytest.fixture(autouse=True)
    def _no_data(self, monkeypatch):
        import transmamba.recipes.lm as lm_recipe

        def refuse(cfg):
            raise AssertionError("the run reached the data loader")

        monkeypatch.setattr(lm_recipe, "load_text_data", refuse)

    def _tiny(self, model=None, train=None, **top):
        return yaml.safe_dump({"device": "cpu", **top, "model": {**self.MODEL, **(model or {})},
                               "train": {**self.TRAIN, **(train or {})}})

    def _refused(self, capsys, tmp_path, text=None, raw=None, name="c.yaml"):
        from transmamba import cli

        f = tmp_path / name
        if raw is not None:
            f.write_bytes(raw)
        elif text is not None:
            f.write_text(text)
        out = tmp_path / "out"
        rc = cli.main(["train", "--config", str(f), "--out_dir", str(out)])
        _, err = capsys.readouterr()
        assert rc == 2, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        assert not out.exists()
        return lines[0][len("error: "):]

    def test_empty_file_is_refused_by_name(self, capsys, tmp_path):
        msg = self._refused(capsys, tmp_path, "# only a comment\n")
        assert f"config file {tmp_path / 'c.yaml'} is empty" in msg

    def test_model_given_a_list(self, capsys, tmp_path):
        msg = self._refused(capsys, tmp_path, "model: [1, 2]\n")
        assert msg.startswith("config key 'model' is a section") and "got list [1, 2]" in msg

    def test_section_given_a_scalar(self, capsys, tmp_path):
        msg = self._refused(capsys, tmp_path, "train: 3\n")
        assert msg.startswith("config key 'train' is a section") and "got int 3" in msg

    def test_base_naming_itself(self, capsys, tmp_path):
        msg = self._refused(capsys, tmp_path, "base: c.yaml\nseed: 1\n")
        assert "`base:` chain is a cycle" in msg and str(tmp_path / "c.yaml") in msg

    def test_base_cycle_of_two_files(self, capsys, tmp_path):
        (tmp_path / "a.yaml").write_text("base: c.yaml\nseed: 2\n")
        msg = self._refused(capsys, tmp_path, "base: a.yaml\nseed: 1\n")
        assert "cycle" in msg and str(tmp_path / "a.yaml") in msg

    def test_duplicate_key_names_key_file_and_lines(self, capsys, tmp_path):
        msg = self._refused(capsys, tmp_path, "seed: 1\nmodel:\n  d_model: 16\n  d_model: 32\n")
        assert msg == (f"config file {tmp_path / 'c.yaml'}: duplicate key 'd_model' at line 4 (first given at "
                       f"line 3); a key may appear once per mapping")

    def test_non_utf8_file_is_named(self, capsys, tmp_path):
        msg = self._refused(capsys, tmp_path, raw=b"seed: 1\nname: caf\xe9\n")
        assert msg.startswith(f"config file {tmp_path / 'c.yaml'} is not UTF-8") and "line 2" in msg

    @pytest.mark.parametrize("model, train, top, key", [
        ({"arch": "mamba2", "expand": 0}, {}, {}, "'model.expand' must be an integer >= 1, got 0"),
        ({"arch": "hybrid", "hybrid_attn_every": 0}, {}, {}, "'model.hybrid_attn_every' must be an integer >= 1"),
        ({"init_std": float("nan")}, {}, {}, "'model.init_std' must be a finite number >= 0, got nan"),
        ({"norm_eps": -1e-5}, {}, {}, "'model.norm_eps' must be a finite number > 0"),
        ({"rope_theta": 0}, {}, {}, "'model.rope_theta' must be a finite number > 0, got 0"),
        ({"schedule": {"name": "fixed", "P": -5}}, {}, {}, "'model.schedule' ({'P': -5, 'name': 'fixed'}) is not a "
                                                          "valid schedule: it gives TransPoint -5 for layer 0"),
        ({"max_seq_len": -1}, {}, {}, "'model.max_seq_len' must be an integer >= 1, got -1"),
        ({}, {"lr": 1e-3, "min_lr": 1e-2}, {}, "'train.min_lr' (0.01) must not exceed 'train.lr' (0.001)"),
    ])
    def test_bad_value_names_its_key(self, capsys, tmp_path, model, train, top, key):
        msg = self._refused(capsys, tmp_path, self._tiny(model, train, **top))
        assert msg.startswith(f"config key {key}"), msg

    def test_cuda_on_a_machine_without_cuda(self, capsys, tmp_path, monkeypatch):
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        msg = self._refused(capsys, tmp_path, self._tiny(device="cuda"))
        assert msg.startswith("config key 'device' is 'cuda' but this machine has no CUDA device")

    @pytest.mark.parametrize("command, extra", [
        ("convert", ["--teacher", "smollm2", "--student"]), ("distill", ["--config"]), ("train-teacher", ["--config"]),
        ("train-vqa", ["--config"]), ("train-retrieval", ["--config"]),
    ])
    @pytest.mark.parametrize("text, words", [
        ("", "is empty"), ("seed: 1\nseed: 2\n", "duplicate key 'seed' at line 2"),
        ("base: c.yaml\n", "`base:` chain is a cycle"),
    ])
    def test_every_command_reads_configs_the_same_way(self, capsys, tmp_path, command, extra, text, words):
        from transmamba import cli

        f = tmp_path / "c.yaml"
        f.write_text(text)
        rc = cli.main([command, *extra, str(f), "--out_dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, err
        assert str(f) in err and not (tmp_path / "out").exists()


def test_duplicate_keys_in_an_override_value_are_refused():
    with pytest.raises(ValueError, match="duplicate key 'P'"):
        parse_value("{name: fixed, P: 1, P: 2}")


def test_merge_keeps_replacing_named_specs_and_empty_dicts():
    from transmamba.config import merge

    assert merge({"m": {"schedule": {"name": "fixed", "P": 1}}}, {"m": {"schedule": "ssm"}}) == {"m": {"schedule": "ssm"}}
    assert merge({"opts": {}}, {"opts": {"a": 1}}, strict=False) == {"opts": {"a": 1}}
