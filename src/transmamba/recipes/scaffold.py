"""What every recipe shares, written once: seeding, the epoch run, the result file and the command line.

    seed_everything(seed)               torch and numpy's global generators (the model's init, dropout, ...)
    seed_of(cfg, key)                   the recipe's seed key: "seed" (train, convert) or "train.seed"
                                        (train-teacher, distill, train-vqa, train-retrieval), as the saved
                                        configs and the recorded commands use them
    per_epoch_eval(tcfg, per_epoch)     train.eval_every null -> once per epoch
    epoch_fit(...)                      an example-based recipe's engine run: its epochs of batches
                                        (`data.batching`), the per-epoch evaluation, "epoch" in every
                                        evaluation row; fsdp refused before anything is written
    run_result(res)                     the result keys every epoch recipe reports (steps, first/last
                                        training loss, seconds, the losses)
    perplexity_eval(...)                the held-out perplexity evaluation of the LM recipes
    write_result(path, result, ...)     result.json / summary.json (and config.yaml), atomically, rank 0
    recipe_main(argv, defaults, run_fn, doc, ...)
                                        the one command line: [--config FILE] [--print-config] [--resume]
                                        [--section.key VALUE ...] and the recipe's own flags
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from transmamba.config import dump_yaml, load_config
from transmamba.data.batching import example_batches, steps_of
from transmamba.io.files import atomic_write_bytes, save_json_atomic
from transmamba.training.engine import Run, fit, is_main_process


def seed_everything(seed: int) -> None:
    """Seed torch's and numpy's global generators with `seed` (numpy's taken mod 2**32)."""
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % 2**32)


def seed_of(cfg: dict, key: str) -> int:
    """The seed at dotted `key` of cfg ("seed" or "train.seed": each recipe keeps its own)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return int(node)


def per_epoch_eval(tcfg: dict, per_epoch: int) -> dict:
    """tcfg with train.eval_every = per_epoch where it is null (the default: evaluate after every epoch)."""
    return {**tcfg, "eval_every": per_epoch if tcfg.get("eval_every") is None else tcfg["eval_every"]}


def epoch_fit(name: str, step_module, arrays: tuple, cfg: dict, evaluate, *, recipe: str, metric_fields: list,
              fingerprint: dict, saved=None, after_eval=None, lr_scale: dict | None = None, group: int = 1,
              fill: float = 0.0, video: bool = False, unit_per_example: int = 1) -> dict:
    """Train `step_module` on epochs of `arrays` (the training tensors, examples first) through the
    engine, evaluating after every epoch (`per_epoch_eval`); each evaluation row gets its "epoch" and
    then goes to after_eval(step, row). Returns `fit`'s result."""
    tcfg = cfg["train"]
    total, per_epoch = steps_of(len(arrays[0]), tcfg)
    tcfg = per_epoch_eval(tcfg, per_epoch)

    def on_eval(step, ev):
        ev["epoch"] = (step - 1) // per_epoch
        if after_eval is not None:
            after_eval(step, ev)

    run = Run(name=name, step_module=step_module,
              batches=example_batches(arrays, tcfg, fill=fill, video=video, group=group), total_steps=total,
              tcfg=tcfg, out_dir=Path(cfg["out_dir"]), config=cfg, saved=saved, evaluate=evaluate,
              after_eval=on_eval, unit="images", unit_per_example=unit_per_example, metric_fields=metric_fields,
              lr_scale=lr_scale, fingerprint=fingerprint, device=cfg.get("device", "cpu"))
    if run.tcfg.get("parallel", "ddp") != "ddp":  # before fit: nothing written yet
        raise ValueError(f"train.parallel fsdp is not supported by the {recipe} recipe (its step module holds the "
                         f"teacher and heads outside the sharded blocks; untested): use train.parallel ddp")
    return fit(run)


def run_result(res: dict) -> dict:
    """The keys every epoch recipe's result starts from: steps, the first training loss, the mean of
    the last 10, the seconds, and the per-step losses (left out of result.json)."""
    losses = res["losses"]
    return {"steps": res["step"], "train_loss_first": losses[0] if losses else None,
            "train_loss_last": float(np.mean(losses[-10:])) if losses else None,
            "elapsed_s": round(res["elapsed_s"], 2), "losses": losses}


def perplexity_eval(val_ids, *, batch_size: int, seq_len: int, n_batches: int, amp) -> Callable:
    """model -> {"val_loss", "val_ppl"} on the held-out ids (`evaluation.perplexity.lm_perplexity`, the
    same windows every time), on the model's device under train.amp."""
    from transmamba.evaluation.perplexity import lm_perplexity

    def evaluate(m):
        r = lm_perplexity(m, val_ids, batch_size=batch_size, seq_len=seq_len, n_batches=n_batches,
                          device=next(m.parameters()).device, amp=amp)
        return {"val_loss": r["val_loss"], "val_ppl": r["val_ppl"]}

    return evaluate


def write_result(path: str | Path, result: dict, *, config: dict | None = None, config_yaml: dict | None = None,
                 drop: Sequence[str] = ()) -> Path | None:
    """On rank 0: `result` without the keys in `drop` (plus "config": config when given) as indented
    JSON at `path`, and config_yaml (when given) as config.yaml beside it; each file written
    atomically (a reader never sees half of one). Returns the JSON's path (None on other ranks)."""
    if not is_main_process():
        return None
    path = Path(path)
    out = {k: v for k, v in result.items() if k not in drop}
    if config is not None:
        out["config"] = config
    if config_yaml is not None:
        atomic_write_bytes(path.parent / "config.yaml", dump_yaml(config_yaml).encode())
    return save_json_atomic(out, path)


def recipe_main(argv: Sequence[str] | None, defaults: dict, run_fn: Callable, doc: str, *, prog: str,
                config_flag: str = "--config", resume: bool = False, flags: Sequence[tuple] = (),
                build: Callable | None = None, resolve: Callable | None = None, hide: Sequence[str] = (),
                indent: int | None = None, status: bool = False, after: Callable | None = None):
    """The command line of every recipe:

        <prog> [--config FILE] [--print-config] [--resume] [--section.key VALUE ...] [flags]

    Any config key is an override (`--train.lr 3e-4`, `--fusion modulate`); -h / --help prints `doc`
    and the defaults; --print-config prints the resolved config (`resolve(cfg)`) and runs nothing.

    config_flag: the option naming the YAML file (convert: --student); resume: whether the recipe
    resumes (--resume, passed on as args.resume); flags: the recipe's own options as
    ((names...), argparse keywords); build(path, overrides, args) -> cfg (default: `load_config` on
    `defaults`); run_fn(cfg, args) -> result, printed as JSON on rank 0 without the keys in `hide`,
    then after(cfg, result). Returns the result (0 when `status`: the vision recipes' exit status)."""
    p = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    p.add_argument(config_flag, dest="config", default=None)
    p.add_argument("--print-config", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    if resume:
        p.add_argument("--resume", action="store_true")
    for names, kw in flags:
        p.add_argument(*names, **kw)
    args, overrides = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    args.resume = bool(getattr(args, "resume", False))
    done = 0 if status else {}
    if args.help:
        options = f"{config_flag} FILE, --print-config" + (", --resume" if resume else "")
        options += "".join(f", {'/'.join(names)}" for names, _ in flags)
        print(f"usage: {prog} [{options}] [--section.key VALUE ...]\n\n{doc}\nDefaults:\n{dump_yaml(defaults)}")
        return done
    cfg = (build or (lambda path, rest, _: load_config(path, rest, defaults=defaults)))(args.config, overrides, args)
    if args.print_config:
        print(dump_yaml(resolve(cfg) if resolve is not None else cfg))
        return done
    result = run_fn(cfg, args)
    if is_main_process():
        print(json.dumps({k: v for k, v in result.items() if k not in hide}, indent=indent))
        if after is not None:
            after(cfg, result)
    return 0 if status else result
