"""Language-model pretraining: `transmamba train --config configs/lm/<name>.yaml [--key value ...]`.

Every architecture (transformer, mamba2, hybrid, transmamba) trains through the one engine
(`transmamba.training.engine.fit`) at an equal token budget: steps = ceil(train.tokens /
(batch_size * seq_len)). This recipe supplies only
    data   random training windows of the Shakespeare works (`transmamba.data.text.batches`),
    loss   model(x, y, transpoints=model.transpoints_for(seq_len, step)),
    eval   held-out perplexity with the schedule's evaluation TransPoints
           (`transmamba.evaluation.perplexity.lm_perplexity`).
Checkpoints in `<out_dir>/checkpoints/`, metrics in `<out_dir>/metrics.csv`, the loss curve in
`<out_dir>/loss.png`, the summary in `<out_dir>/summary.json`, the final model in Hugging Face
format in `<out_dir>/student` (`AutoModelForCausalLM.from_pretrained` after `import transmamba`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from transmamba.config import (NONNEG_INT, POSITIVE_INT, TRAIN_RULES, Rule, check_config, load_config,
                               merge, parse_overrides, set_dotted)
from transmamba.io import checkpoint as ckpt
from transmamba.models.lm import LM
from transmamba.hf.student import save_hf
from transmamba.recipes.scaffold import perplexity_eval, recipe_main, seed_everything, seed_of, write_result
from transmamba.training.engine import ENGINE_DEFAULTS, Run, fit, is_main_process
from transmamba.training.optim import total_steps_for

SEED = "seed"  # this recipe's seed key
TRAIN_DEFAULTS: dict = {
    "name": "lm",
    "out_dir": None,  # None: runs/lm/<name>
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:1 ...
    "data": {"tokenizer": "bpe-8192", "cache_dir": "cache/text"},
    "model": {"vocab_size": "auto"},  # filled with LMConfig's fields; "auto": the tokenizer's size
    "train": {
        **copy.deepcopy(ENGINE_DEFAULTS),
        "tokens": 1_000_000,  # token budget: steps = ceil(tokens / (batch_size * seq_len))
        "batch_size": 16,  # global batch (split across processes)
        "seq_len": 256,
        "eval_batches": 16,  # fixed number of validation batches (of batch_size windows)
        "tf32": True,  # TF32 matmuls on CUDA
    },
}

MODEL_RULES: dict[str, Rule] = {
    "model.d_model": POSITIVE_INT, "model.n_layers": POSITIVE_INT, "model.n_heads": POSITIVE_INT,
    "model.d_ff": POSITIVE_INT | Rule("null", lambda v: v is None),
    "model.vocab_size": POSITIVE_INT | Rule("'auto'", lambda v: v in ("auto", None)),
    "train.eval_batches": POSITIVE_INT, "model.head_dim": POSITIVE_INT, "model.d_state": POSITIVE_INT, "model.d_conv": POSITIVE_INT,
    "model.n_kv_heads": POSITIVE_INT | Rule("null", lambda v: v is None), "model.chunk_size": POSITIVE_INT,
    "train.keep_checkpoints": NONNEG_INT,
}


def _lm_field_defaults() -> dict:
    """{field: default} of LMConfig."""
    from transmamba.models.lm import LMConfig

    out = {}
    for f in dataclasses.fields(LMConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = copy.deepcopy(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = None
    return out


def default_config(with_model_fields: bool = True) -> dict:
    """TRAIN_DEFAULTS with the model section holding every LMConfig field."""
    cfg = copy.deepcopy(TRAIN_DEFAULTS)
    if with_model_fields:
        cfg["model"] = {**_lm_field_defaults(), **cfg["model"]}
    return cfg


def resolve_config(cfg: dict, *, strict_model: bool = True) -> dict:
    """Defaults <- cfg, checking keys (the model section against LMConfig only if strict_model),
    then types and ranges (ValueError naming the key)."""
    base = default_config(with_model_fields=strict_model)
    model_part = cfg.get("model", {})
    rest = {k: v for k, v in cfg.items() if k != "model"}
    out = merge(base, rest, strict=True)
    out["model"] = merge(base["model"], model_part, strict=strict_model, _prefix="model.")
    if out["out_dir"] is None:
        out["out_dir"] = str(Path("runs") / "lm" / out["name"])
    check_config(out, {**TRAIN_RULES, **MODEL_RULES})
    if strict_model:
        lm_config(out["model"])  # every model key's value, named as model.<key>, before any work
    return out


def lm_config(model_cfg: dict, vocab_size: int | None = None):
    """The LMConfig of a model section (ValueError naming model.<key> for a bad value); vocab_size
    "auto" stands for `vocab_size` (or 1 where it is not known yet: only the other keys are checked)."""
    from transmamba.models.lm import LMConfig

    m = dict(model_cfg)
    if m.get("vocab_size") in (None, "auto"):
        m["vocab_size"] = vocab_size or 1
    return LMConfig.from_dict(m)


def check_memory(cfg: dict, vocab_size: int) -> None:
    """Refuse (MemoryEstimateError: the estimate, what the device has, the override) a run whose
    model, batch and sequence cannot fit, before the model or any batch is allocated: the
    parameters are counted on the meta device."""
    from transmamba.models.lm import LM
    from transmamba.training.engine import world_size
    from transmamba.training.memory import check_fits, lm_estimate, resolve_device

    t = cfg["train"]
    mcfg = lm_config(cfg["model"], vocab_size)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in LM(mcfg).parameters())
    world = world_size()
    est = lm_estimate(mcfg, n_params, batch_size=int(t["batch_size"]), seq_len=int(t["seq_len"]),
                      grad_accum=int(t.get("grad_accum") or 1), processes=world,
                      parallel=t.get("parallel", "ddp"), activation_checkpointing=bool(t.get("activation_checkpointing")))
    device = resolve_device(cfg["device"])
    check_fits(est, device, processes_sharing=world if device.type == "cpu" else 1,
               what=f"training {cfg['name']} ({n_params / 1e6:.1f}M parameters, batch {t['batch_size']} x "
                    f"{t['seq_len']} tokens)", skip=bool(t.get("skip_memory_check")))


@dataclass
class TextData:
    """Token streams for training: "(n,)" id arrays and the vocabulary size they index into."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    vocab_size: int
    tokenizer: str | None = None


def load_text_data(cfg: dict) -> TextData:
    """The Shakespeare training/validation streams for cfg["data"]["tokenizer"]."""
    from transmamba.data import text

    name, cache = cfg["data"]["tokenizer"], cfg["data"]["cache_dir"]
    tok = text.load_tokenizer(name, cache)
    return TextData(text.token_ids("train", name, cache), text.token_ids("val", name, cache), len(tok), name)


def build_lm(model_cfg: dict) -> nn.Module:
    from transmamba.models.lm import LM, LMConfig

    return LM(LMConfig.from_dict(model_cfg))


class LMStep(nn.Module):
    """The engine's step module: next-token cross-entropy under the schedule's TransPoints of `step`."""

    def __init__(self, model: nn.Module, seq_len: int):
        super().__init__()
        self.model, self.seq_len = model, seq_len

    def forward(self, batch, step: int):
        x, y = batch
        _, loss = self.model(x, y, transpoints=self.model.transpoints_for(self.seq_len, step))
        return loss, {}


def window_batches(ids: np.ndarray, batch_size: int, seq_len: int, seed: int) -> Callable[[int], object]:
    """start_step -> the endless stream of random training windows from step `start_step` on
    (the same seed gives the same windows; resuming skips the ones already drawn)."""
    from transmamba.data.text import batches

    def stream(start: int):
        it = batches(ids, batch_size, seq_len, seed=seed, device="cpu")
        for _ in range(start):
            next(it)
        return it

    return stream


def train(cfg: dict, *, resume: bool = False, data: TextData | None = None,
          model_fn: Callable[[dict], nn.Module] | None = None) -> dict:
    """Train an LM as `cfg` says; returns the summary (also <out_dir>/summary.json).

    data: token streams to use instead of the Shakespeare corpus (tests, other corpora).
    model_fn: model section -> module with the LM interface, instead of transmamba.models.lm.LM."""
    from transmamba.training.memory import check_device

    cfg = resolve_config(cfg, strict_model=model_fn is None)
    check_device(cfg["device"])
    t = cfg["train"]
    B, T = int(t["batch_size"]), int(t["seq_len"])
    data = data if data is not None else load_text_data(cfg)
    if cfg["model"].get("vocab_size") in (None, "auto"):
        cfg["model"]["vocab_size"] = int(data.vocab_size)
    elif int(cfg["model"]["vocab_size"]) < data.vocab_size:
        raise ValueError(f"model.vocab_size={cfg['model']['vocab_size']} is smaller than the tokenizer's "
                         f"{data.vocab_size} tokens")
    if model_fn is None:
        check_memory(cfg, int(cfg["model"]["vocab_size"]))
    seed_everything(seed_of(cfg, SEED))
    model = (model_fn or build_lm)(cfg["model"])
    out_dir = Path(cfg["out_dir"])
    evaluate = perplexity_eval(data.val_ids, batch_size=B, seq_len=T, n_batches=int(t["eval_batches"]), amp=t["amp"])
    run = Run(name=cfg["name"], step_module=LMStep(model, T), batches=window_batches(data.train_ids, B, T, cfg["seed"]),
              total_steps=total_steps_for(int(t["tokens"]), B, T), tcfg=t, out_dir=out_dir, config=cfg,
              evaluate=evaluate, unit="tokens", unit_per_example=T, metric_fields=["val_loss", "val_ppl"],
              fingerprint={"model": cfg["model"]}, best_key="val_loss", device=cfg["device"])
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
    res = fit(run, resume=resume)
    ev = res["last_eval"]
    summary = {
        "name": cfg["name"], "arch": cfg["model"].get("arch"), "params": res["params"], "step": res["step"],
        "total_steps": res["total_steps"], "tokens": res["tokens"], "halted": res["halted"],
        "final_train_loss": res["final_train_loss"], "final_val_loss": ev.get("val_loss"),
        "final_val_ppl": ev.get("val_ppl"), "best_val_loss": res["best"], "tok_per_s": res["tok_per_s"],
        "elapsed_s": res["elapsed_s"], "device": res["device"], "processes": res["processes"], "amp": res["amp"],
        "amp_reason": res["amp_reason"],
        "out_dir": str(out_dir), "checkpoint": res["checkpoint"], "metrics_csv": res["metrics_csv"],
        "loss_png": res["loss_png"],
    }
    if is_main_process():
        if isinstance(model, LM):  # the final student, Hugging Face format (AutoModelForCausalLM)
            from transmamba.data.text import load_tokenizer

            tok = load_tokenizer(cfg["data"]["tokenizer"], cfg["data"]["cache_dir"])
            tok = tok if len(tok) <= model.cfg.vocab_size else None  # a test-sized vocabulary: no tokenizer
            summary["student"] = str(save_hf(model, out_dir / "student", tok,
                                             run_info={"config": cfg, "summary": dict(summary)}))
    write_result(out_dir / "summary.json", summary, config_yaml=cfg)
    return summary


def build_config(config_path: str | None, overrides: list[str], *, resume: bool = False) -> dict:
    """Config from a YAML file (name defaults to its stem) plus dotted overrides.

    Without a file, `resume` with `--out_dir DIR` reuses the config saved in DIR's newest checkpoint."""
    pairs = parse_overrides(overrides)
    if config_path is not None:
        defaults = default_config()
        defaults["name"] = Path(config_path).stem
        return load_config(config_path, dict(pairs), defaults=defaults)
    out_dir = dict(pairs).get("out_dir")
    if not resume or out_dir is None:
        raise ValueError("--config is required (or --resume with --out_dir DIR to continue a run)")
    latest = ckpt.latest_checkpoint(Path(out_dir) / "checkpoints", verify=True)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint to resume in {Path(out_dir) / 'checkpoints'}")
    cfg = ckpt.read_config(latest)
    cfg.pop("fingerprint", None)
    for k, v in pairs:
        set_dotted(cfg, k, v, strict=True)
    return cfg


def train_main(argv: list[str] | None = None) -> dict:
    """`transmamba train --config FILE [--resume] [--print-config] [--section.key VALUE ...]`.

    Train a language model. Any config key can be overridden as --section.key VALUE (e.g. --train.lr
    3e-4 --model.n_layers 4 --out_dir runs/x); --resume continues from the newest checkpoint in
    out_dir (without --config: the config saved there)."""
    return recipe_main(argv, default_config(), lambda cfg, args: train(cfg, resume=args.resume), train_main.__doc__,
                       prog="transmamba train", resume=True, indent=2,
                       build=lambda path, rest, args: build_config(path, rest, resume=args.resume),
                       resolve=resolve_config)
