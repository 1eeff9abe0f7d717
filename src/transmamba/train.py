"""Language-model training: `transmamba train --config configs/lm/<name>.yaml [--key value ...]`.

One loop for every architecture (transformer, mamba2, hybrid, transmamba), so runs compare at
an equal token budget: steps = ceil(train.tokens / (batch_size * seq_len)).

Per step: x, y = a random window batch of the training works (`transmamba.data.text.batches`),
loss = model(x, y, transpoints=model.transpoints_for(seq_len, step)), AdamW (weight decay on
weights of rank >= 2 only), gradient clipping, learning rate from `lr_at` (linear warmup then
cosine decay). Every `eval_every` steps: validation loss and perplexity on a fixed number of
windows of the held-out works, with the schedule's evaluation TransPoints (step=None).
Checkpoints (`transmamba.checkpoint`) every `ckpt_every` steps and at the end; `--resume`
continues from the newest one in `<out_dir>/checkpoints/` exactly where the run left off (same
weights, optimizer moments, data windows and RNG: the loss curve continues as if uninterrupted).
Metrics go to `<out_dir>/metrics.csv`, the loss curve to `<out_dir>/loss.png`, the final summary
to `<out_dir>/summary.json`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from transmamba import checkpoint as ckpt_lib
from transmamba.config import dump_yaml, load_config, merge, parse_overrides, set_dotted
from transmamba.run_log import MetricsLog, plot_loss_curve


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient norm; the message names the step."""


# ---------------------------------------------------------------------------------------- config
TRAIN_DEFAULTS: dict = {
    "name": "lm",
    "out_dir": None,  # None: runs/lm/<name>
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:1 ...
    "data": {"tokenizer": "bpe-8192", "cache_dir": "cache/text"},
    "model": {"vocab_size": "auto"},  # filled with LMConfig's fields; "auto": the tokenizer's size
    "train": {
        "tokens": 1_000_000,  # token budget: steps = ceil(tokens / (batch_size * seq_len))
        "batch_size": 16,
        "seq_len": 256,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_steps": 100,
        "weight_decay": 0.1,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "grad_clip": 1.0,  # <= 0: no clipping
        "log_every": 10,
        "eval_every": 200,
        "eval_batches": 16,  # fixed number of validation batches (of batch_size windows)
        "ckpt_every": 500,
        "keep_checkpoints": 2,  # <= 0: keep all
        "halt_at_step": None,  # stop early (with a checkpoint); the schedule still follows `tokens`
        "amp": "none",  # none | bf16 (autocast)
        "tf32": True,  # TF32 matmuls on CUDA
        "compile": False,  # torch.compile the model
        "threads": None,  # CPU intra-op threads (None: torch's default); 1 is fastest on a busy shared box
        "progress": True,  # tqdm bar
    },
}


def _lm_field_defaults() -> dict | None:
    """{field: default} of LMConfig (None when transmamba.models.lm is not importable)."""
    try:
        from transmamba.models.lm import LMConfig
    except ImportError:
        return None
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
    """TRAIN_DEFAULTS with the model section holding every LMConfig field (when available)."""
    cfg = copy.deepcopy(TRAIN_DEFAULTS)
    fields = _lm_field_defaults() if with_model_fields else None
    if fields is not None:
        cfg["model"] = {**fields, **cfg["model"]}
    return cfg


def resolve_config(cfg: dict, *, strict_model: bool = True) -> dict:
    """Defaults <- cfg, checking keys (the model section against LMConfig only if strict_model)."""
    base = default_config(with_model_fields=strict_model)
    model_part = cfg.get("model", {})
    rest = {k: v for k, v in cfg.items() if k != "model"}
    out = merge(base, rest, strict=True)
    out["model"] = merge(base["model"], model_part, strict=strict_model and _lm_field_defaults() is not None,
                         _prefix="model.")
    if out["out_dir"] is None:
        out["out_dir"] = str(Path("runs") / "lm" / out["name"])
    return out


# ------------------------------------------------------------------------------------ schedule
def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for the optimizer step with 0-based index `step`.

    warmup (s < W):  lr(s) = lr * (s + 1) / W
    cosine (s >= W): lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / max(1, S - W))) / 2
    with W = warmup_steps and S = total_steps.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps_for(tokens: int, batch_size: int, seq_len: int) -> int:
    """steps = ceil(tokens / (batch_size * seq_len)): the token budget in optimizer steps."""
    return max(1, math.ceil(tokens / (batch_size * seq_len)))


# ---------------------------------------------------------------------------------------- pieces
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


def build_lm(model_cfg: dict) -> torch.nn.Module:
    from transmamba.models.lm import LM, LMConfig

    return LM(LMConfig.from_dict(model_cfg))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, tcfg: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of rank >= 2 (matmul/embedding weights) only.

    Biases, norm gains and SSM vectors (A_log, D, dt_bias: rank 1) are not decayed.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields tied weights once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tcfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=tcfg["lr"], betas=tuple(tcfg["betas"]), eps=tcfg["eps"], **kw)


class TrainStream:
    """Endless training batches, reproducible from (seed, number already drawn) so resume can skip."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        from transmamba.data.text import batches

        self._it = batches(ids, batch_size, seq_len, seed=seed, device="cpu")

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self._it)

    def skip(self, n: int) -> None:
        for _ in range(n):
            next(self._it)


@torch.no_grad()
def evaluate(model, val_ids: np.ndarray, batch_size: int, seq_len: int, n_batches: int,
             device: torch.device, amp: str = "none") -> dict:
    """Mean validation cross-entropy over the first n_batches * batch_size windows, and exp of it.

    val_loss = sum_i CE_i * n_i / sum_i n_i  (n_i = tokens in batch i),  val_ppl = exp(val_loss),
    with the schedule's evaluation TransPoints (transpoints_for(seq_len, step=None)).
    """
    from transmamba.data.text import eval_batches

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    tp = model.transpoints_for(seq_len, None)
    for x, y in eval_batches(val_ids, batch_size, seq_len, max_windows=n_batches * batch_size):
        x, y = x.to(device), y.to(device)
        with _autocast(device, amp):
            _, loss = model(x, y, transpoints=tp)
        total += float(loss) * y.numel()
        count += y.numel()
    model.train(was_training)
    val_loss = total / max(count, 1)
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)), "val_tokens": count}


def _autocast(device: torch.device, amp: str):
    if amp not in ("none", "bf16"):
        raise ValueError(f"train.amp must be 'none' or 'bf16', got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            keys += _diff_keys(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            keys.append(f"{prefix}{k}")
    return keys


def _say(msg: str, progress) -> None:
    if progress is not None:
        progress.write(msg)
    else:
        print(msg, file=sys.stderr)


# ------------------------------------------------------------------------------------ the loop
def train(
    cfg: dict,
    *,
    resume: bool = False,
    data: TextData | None = None,
    model_fn: Callable[[dict], torch.nn.Module] | None = None,
) -> dict:
    """Train an LM as `cfg` says and return a summary dict (also written to <out_dir>/summary.json).

    cfg: nested dict (see TRAIN_DEFAULTS; the model section holds LMConfig fields).
    resume: continue from the newest checkpoint in <out_dir>/checkpoints (fresh start if none).
    data: token streams to use instead of the Shakespeare corpus (tests, other corpora).
    model_fn: model section -> module with the LM interface, instead of transmamba.models.lm.LM.
    """
    cfg = resolve_config(cfg, strict_model=model_fn is None)
    tcfg = cfg["train"]
    B, T = int(tcfg["batch_size"]), int(tcfg["seq_len"])
    device = pick_device(cfg["device"])
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    if device.type == "cuda" and tcfg["tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(cfg["out_dir"])
    ckpt_root = out_dir / "checkpoints"

    data = data if data is not None else load_text_data(cfg)
    if cfg["model"].get("vocab_size") in (None, "auto"):
        cfg["model"]["vocab_size"] = int(data.vocab_size)
    elif int(cfg["model"]["vocab_size"]) < data.vocab_size:
        raise ValueError(f"model.vocab_size={cfg['model']['vocab_size']} is smaller than the tokenizer's "
                         f"{data.vocab_size} tokens")

    latest = ckpt_lib.latest_checkpoint(ckpt_root)
    if latest is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds checkpoints (newest {latest.name}); pass --resume "
                              f"to continue that run, or choose another --out_dir")
    if resume and latest is None:
        print(f"--resume: no checkpoint in {ckpt_root}, starting from scratch", file=sys.stderr)

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    model = (model_fn or build_lm)(cfg["model"]).to(device)
    optimizer = make_optimizer(model, tcfg, device)
    total_steps = total_steps_for(int(tcfg["tokens"]), B, T)
    stream = TrainStream(data.train_ids, B, T, seed=cfg["seed"])

    step, tokens, elapsed0, best_val = 0, 0, 0.0, math.inf
    last_val: dict = {}
    ckpt_lib.clean_partial(ckpt_root)
    metrics = MetricsLog(out_dir / "metrics.csv")
    if resume and latest is not None:
        saved_model = ckpt_lib.read_config(latest).get("model", {})
        changed = _diff_keys(saved_model, cfg["model"])
        if changed:
            raise ValueError(f"cannot resume {latest}: model config differs in {', '.join('model.' + k for k in changed)}")
        restored = ckpt_lib.load_checkpoint(latest, model, optimizer)
        st = restored["state"]
        step, tokens = restored["step"], int(st.get("tokens", restored["step"] * B * T))
        elapsed0 = float(st.get("elapsed_s") or 0.0)
        best_val = math.inf if st.get("best_val_loss") is None else float(st["best_val_loss"])
        last_val = st.get("last_val", {}) or {}
        dropped = metrics.truncate_after(step)
        stream.skip(step)
        ckpt_lib.set_rng_state(st["rng"])  # last: building the model above consumed RNG
        print(f"resumed from {latest} at step {step}/{total_steps}"
              + (f" (dropped {dropped} metric rows logged after it)" if dropped else ""), file=sys.stderr)
    else:
        metrics.truncate_after(0)  # rows of an earlier attempt that never reached a checkpoint
    start_step = step
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))

    n_params = count_params(model)
    fwd = torch.compile(model) if tcfg["compile"] else model
    halt = tcfg["halt_at_step"]
    stop_at = total_steps if halt is None else min(total_steps, int(halt))
    progress = None
    if tcfg["progress"]:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=cfg["name"], unit="step", dynamic_ncols=True)
    _say(f"[{cfg['name']}] {cfg['model'].get('arch', '?')}: {n_params / 1e6:.2f}M params, {total_steps} steps of "
         f"{B}x{T} tokens ({total_steps * B * T / 1e6:.2f}M tokens), device {device}", progress)

    t_start = time.perf_counter()
    win_t0, win_tokens, win_loss, win_n = time.perf_counter(), 0, 0.0, 0
    last_saved, train_loss, tok_per_s, gnorm = -1, math.nan, 0.0, math.nan
    params = [p for p in model.parameters() if p.requires_grad]

    def save(at_step: int) -> None:
        nonlocal last_saved
        extra = {"tokens": tokens, "elapsed_s": elapsed0 + time.perf_counter() - t_start,
                 "best_val_loss": best_val if math.isfinite(best_val) else None,
                 "last_val": last_val, "metrics": {"train_loss": train_loss, **last_val},
                 "total_steps": total_steps}
        ckpt_lib.save_checkpoint(ckpt_root / ckpt_lib.step_dir_name(at_step), model, optimizer, at_step, cfg, extra)
        ckpt_lib.prune_checkpoints(ckpt_root, int(tcfg["keep_checkpoints"]))
        last_saved = at_step

    def check(pending: list) -> list[tuple[float, float]]:
        """(loss, grad norm) of the pending steps, fetched with one device sync; NaN/Inf -> error naming the step."""
        vals = torch.stack([torch.stack([l_, g_.to(l_.device)]) for _, l_, g_, _ in pending]).float().tolist()
        for (s_, _, _, lr_), (l_, g_) in zip(pending, vals):
            if not math.isfinite(l_):
                raise NonFiniteLossError(f"training loss is {l_} at step {s_} (lr {lr_:.3g}); stopping. "
                                         f"The last good checkpoint is in {ckpt_root}")
            if not math.isfinite(g_):
                raise NonFiniteLossError(f"gradient norm is {g_} at step {s_} (loss {l_:.4f}, lr {lr_:.3g}); "
                                         f"stopping. The last good checkpoint is in {ckpt_root}")
        return vals

    # Losses stay on the device until a log/eval/checkpoint step checks them all at once, so the
    # GPU is not synchronised every step; nothing is saved before the steps since the last check pass.
    max_norm = float(tcfg["grad_clip"]) if tcfg["grad_clip"] and tcfg["grad_clip"] > 0 else math.inf
    pending: list = []
    model.train()
    try:
        while step < stop_at:
            lr = lr_at(step, lr=tcfg["lr"], min_lr=tcfg["min_lr"], warmup_steps=int(tcfg["warmup_steps"]),
                       total_steps=total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = stream.next()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, tcfg["amp"]):
                _, loss = fwd(x, y, transpoints=model.transpoints_for(T, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm_t = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            step += 1
            tokens += B * T
            win_tokens += B * T
            pending.append((step, loss.detach(), gnorm_t.detach(), lr))

            do_eval = step % int(tcfg["eval_every"]) == 0 or step == total_steps
            do_save = step % int(tcfg["ckpt_every"]) == 0 or step == stop_at
            do_log = do_eval or step % int(tcfg["log_every"]) == 0 or step == stop_at
            if do_log or do_save:
                vals = check(pending)
                pending.clear()
                win_loss += sum(v[0] for v in vals)
                win_n += len(vals)
                gnorm = vals[-1][1]
            if do_log:
                train_loss = win_loss / win_n
                tok_per_s = win_tokens / max(time.perf_counter() - win_t0, 1e-9)
                row = {"step": step, "tokens": tokens, "train_loss": train_loss, "lr": lr, "grad_norm": gnorm,
                       "tok_per_s": tok_per_s}
                if do_eval:
                    last_val = evaluate(model, data.val_ids, B, T, int(tcfg["eval_batches"]), device, tcfg["amp"])
                    last_val = {k: last_val[k] for k in ("val_loss", "val_ppl")}
                    best_val = min(best_val, last_val["val_loss"])
                    row.update(last_val)
                    _say(f"step {step}/{total_steps}: train {train_loss:.4f}, val {last_val['val_loss']:.4f} "
                         f"(ppl {last_val['val_ppl']:.2f}), {tok_per_s:,.0f} tok/s", progress)
                row["elapsed_s"] = elapsed0 + time.perf_counter() - t_start
                metrics.log(**row)
                win_t0, win_tokens, win_loss, win_n = time.perf_counter(), 0, 0.0, 0
            if progress is not None:
                if do_log or do_save:
                    progress.set_postfix(loss=f"{vals[-1][0]:.3f}", tok_s=f"{tok_per_s:,.0f}", lr=f"{lr:.2e}",
                                         refresh=False)
                progress.update(1)
            if do_save:
                t_save = time.perf_counter()
                save(step)
                win_t0 += time.perf_counter() - t_save  # keep checkpoint writing out of tokens/s
    finally:
        if progress is not None:
            progress.close()
    if last_saved != step and step > start_step:
        save(step)

    png = plot_loss_curve(out_dir / "metrics.csv", out_dir / "loss.png",
                          title=f"{cfg['name']} ({cfg['model'].get('arch', '?')}, {n_params / 1e6:.1f}M params)")
    elapsed = elapsed0 + time.perf_counter() - t_start
    summary = {
        "name": cfg["name"], "arch": cfg["model"].get("arch"), "params": n_params, "step": step,
        "total_steps": total_steps, "tokens": tokens, "halted": step < total_steps,
        "final_train_loss": train_loss, "final_val_loss": last_val.get("val_loss"),
        "final_val_ppl": last_val.get("val_ppl"), "best_val_loss": best_val if math.isfinite(best_val) else None,
        "tok_per_s": tokens / elapsed if elapsed > 0 else None, "elapsed_s": elapsed, "device": str(device),
        "out_dir": str(out_dir), "checkpoint": str(ckpt_lib.latest_checkpoint(ckpt_root)),
        "metrics_csv": str(out_dir / "metrics.csv"), "loss_png": str(png),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ------------------------------------------------------------------------------------------ CLI
def build_config(config_path: str | None, overrides: list[str], *, resume: bool = False) -> dict:
    """Config from a YAML file (name defaults to its stem) plus dotted overrides.

    Without a file, `resume` with `--out_dir DIR` reuses the config saved in DIR's newest checkpoint.
    """
    pairs = parse_overrides(overrides)
    if config_path is not None:
        defaults = default_config()
        defaults["name"] = Path(config_path).stem
        return load_config(config_path, dict(pairs), defaults=defaults)
    out_dir = dict(pairs).get("out_dir")
    if not resume or out_dir is None:
        raise ValueError("--config is required (or --resume with --out_dir DIR to continue a run)")
    latest = ckpt_lib.latest_checkpoint(Path(out_dir) / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"no checkpoint to resume in {Path(out_dir) / 'checkpoints'}")
    cfg = ckpt_lib.read_config(latest)
    for k, v in pairs:
        set_dotted(cfg, k, v, strict=True)
    return cfg


def train_main(argv: list[str] | None = None) -> dict:
    """`transmamba train --config FILE [--resume] [--print-config] [--section.key VALUE ...]`."""
    p = argparse.ArgumentParser(
        prog="transmamba train", allow_abbrev=False,
        description="Train a language model. Any config key can be overridden as --section.key VALUE "
                    "(e.g. --train.lr 3e-4 --model.n_layers 4 --out_dir runs/x).")
    p.add_argument("--config", help="YAML config, e.g. configs/lm/transmamba.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, rest = p.parse_known_args(argv)
    cfg = build_config(args.config, rest, resume=args.resume)
    if args.print_config:
        print(dump_yaml(resolve_config(cfg)))
        return {}
    summary = train(cfg, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    train_main()
