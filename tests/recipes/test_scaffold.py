"""The recipes' shared scaffold (transmamba.recipes.scaffold): seeding, the one command line, the result file."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transmamba.recipes.scaffold import recipe_main, run_result, seed_everything, seed_of, write_result

ROOT = Path(__file__).resolve().parents[2]


def test_seed_everything_reproduces_torch_and_numpy_draws():
    seed_everything(7)
    a = (torch.rand(4), np.random.rand(4))
    torch.rand(3), np.random.rand(3)  # move both generators on
    seed_everything(7)
    b = (torch.rand(4), np.random.rand(4))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    seed_everything(8)
    assert not torch.equal(torch.rand(4), a[0])


def test_seed_of_reads_the_key_each_recipe_uses():
    from transmamba.recipes import lm, retrieval, vision, vqa
    from transmamba.recipes.convert import stages

    cfg = {"seed": 3, "train": {"seed": 5}}
    assert seed_of(cfg, lm.SEED) == seed_of(cfg, stages.SEED) == 3  # train, convert: top-level seed
    assert seed_of(cfg, vision.SEED) == seed_of(cfg, vqa.SEED) == seed_of(cfg, retrieval.SEED) == 5


def _mains():
    from transmamba.recipes.convert import convert_main
    from transmamba.recipes.lm import train_main
    from transmamba.recipes.retrieval import train_retrieval_main
    from transmamba.recipes.vision import distill_main, train_teacher_main
    from transmamba.recipes.vqa import train_vqa_main

    return {  # main, the config option and file, an override: (key, value on the command line, parsed value)
        "train": (train_main, "--config", "configs/lm/transmamba.yaml", ("train.lr", "2e-4", 2e-4)),
        "train-teacher": (train_teacher_main, "--config", "configs/vision/teacher-fmnist.yaml",
                          ("train.epochs", "7", 7)),
        "distill": (distill_main, "--config", "configs/vision/vim-fmnist.yaml", ("mode", "scratch", "scratch")),
        "train-vqa": (train_vqa_main, "--config", "configs/multimodal/vqa-fmnist.yaml", ("fusion", "late", "late")),
        "train-retrieval": (train_retrieval_main, "--config", "configs/multimodal/retrieval-grids.yaml",
                            ("role", "teacher", "teacher")),
        "convert": (convert_main, "--student", "configs/convert/smollm2-switch.yaml", ("recipe.keep_heads", "2", 2)),
    }


@pytest.mark.parametrize("name", ["train", "train-teacher", "distill", "train-vqa", "train-retrieval", "convert"])
def test_every_recipe_parses_config_and_overrides_through_one_entry(name, capsys, monkeypatch):
    """--print-config prints the config file with the dotted override applied, for every recipe alike,
    and runs nothing; -h prints the defaults."""
    monkeypatch.chdir(ROOT)
    main, flag, path, (key, text, value) = _mains()[name]
    done = main([flag, path, f"--{key}", text, "--print-config"])
    assert done in (0, {})
    cfg = yaml.safe_load(capsys.readouterr().out)
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == value
    assert cfg == {**cfg, **{k: v for k, v in yaml.safe_load((ROOT / path).read_text()).items()
                             if k not in ("base", key.split(".")[0]) and not isinstance(v, dict)}}
    assert main(["-h"]) == done and "Defaults:" in capsys.readouterr().out


def test_unknown_override_is_named_for_every_recipe(monkeypatch):
    monkeypatch.chdir(ROOT)
    for name, (main, flag, path, _) in _mains().items():
        with pytest.raises(ValueError, match="trian"):
            main([flag, path, "--trian.lr", "1", "--print-config"])


def test_write_result_is_atomic_and_drops_keys(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_result(path, {"a": 1, "losses": [1.0, 2.0]}, config={"seed": 0}, config_yaml={"seed": 0}, drop=("losses",))
    assert json.loads(path.read_text()) == {"a": 1, "config": {"seed": 0}}
    assert path.read_text() == json.dumps({"a": 1, "config": {"seed": 0}}, indent=2)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"seed": 0}

    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)  # the rename that publishes the file fails
    with pytest.raises(OSError, match="disk full"):
        write_result(path, {"a": 2})
    assert json.loads(path.read_text())["a"] == 1  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "result.json"]  # no temporary left


def test_run_result_keys():
    r = run_result({"step": 3, "losses": [3.0, 2.0, 1.0], "elapsed_s": 1.234})
    assert r == {"steps": 3, "train_loss_first": 3.0, "train_loss_last": 2.0, "elapsed_s": 1.23,
                 "losses": [3.0, 2.0, 1.0]}


def test_recipe_main_runs_with_the_recipe_flags_and_hides_keys(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("a: 2\n")
    seen = {}

    def run(cfg, args):
        seen.update(cfg=cfg, quiet=args.quiet, resume=args.resume)
        return {"x": cfg["a"], "losses": [1]}

    out = recipe_main(["--config", str(cfg_file), "--b.c", "5", "--quiet", "--resume"], {"a": 1, "b": {"c": 0}}, run,
                      "doc", prog="p", resume=True, flags=((("--quiet",), dict(action="store_true")),), hide=("losses",))
    assert out == {"x": 2, "losses": [1]} and seen == {"cfg": {"a": 2, "b": {"c": 5}}, "quiet": True, "resume": True}
    assert json.loads(capsys.readouterr().out) == {"x": 2}
