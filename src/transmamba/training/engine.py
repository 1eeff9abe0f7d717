"""The one training loop of transmamba, on Hugging Face `accelerate`.

Every recipe (LM pretraining, vision Adapt, VQA, convert distillation) hands `fit` a `Run`: a
`step_module` whose forward(batch, step) returns (loss, {name: scalar tensor}), the global batches,
the step budget and an evaluation. `fit` owns the rest:

    for step in range(start, total):
        lr  = lr_scale_g * lr_at(step)                       (warmup + cosine, training/optim.py)
        batch -> this rank's shard -> grad_accum micro-batches
        loss_m * n_m * world / N  backward                   (so DDP's gradient mean = the global mean)
        g = clip_grad_norm(params, grad_clip); refuse a non-finite loss or g (NonFiniteLossError)
        AdamW step;  log / evaluate / checkpoint on their periods (0 = off)

Multi-process: `torchrun --nproc_per_node N` or `accelerate launch --num_processes N` (gloo on CPU,
NCCL on GPUs); data parallel (DDP) by default, or `train.parallel: fsdp`: torch's FSDP2 shards the
parameters, gradients and AdamW state over the ranks (transmamba.training.fsdp: sharded checkpoints,
the recipe's modules whole again after fit); accelerate's FSDP and DeepSpeed are refused before any work. Every rank draws the same global batch (same seed) and keeps its contiguous slice
`tensor_split(batch, world)[rank]`, so ranks never overlap and 1 process with batch B computes the
same steps as N processes with B / N each (tested to 1e-5). Only rank 0 writes files (metrics.csv,
loss.png, checkpoints, the lock `<out_dir>/.lock`); evaluation runs on rank 0 while the others wait.

Mixed precision: `train.amp: auto` (the default) runs bf16 where the device multiplies bf16
natively and faster than fp32, fp32 elsewhere (`transmamba.hardware.precision.resolve_amp`: the
CPU's flags and a matmul probe; an AVX2-only CPU runs bf16 ~40x slower than fp32). `bf16` runs
the step module's forward under `torch.autocast(dtype=bfloat16)` (with a warning where it is slow);
`none` is fp32. Parameters, gradients and AdamW state stay fp32 (master weights). The SSM kernels
keep their state and accumulation in fp32 under autocast (ops/ssd.py, ops/memory_converter.py,
ops/selective_scan.py: the chunk/inter-chunk recurrences run with autocast off). The precision that
ran and why is in the log line, metrics.csv (column amp) and the summary (amp, amp_reason).

Crash safety: checkpoints are atomic and checksummed (transmamba.io.checkpoint); a checkpoint is
written only after every step before it passed the finite check; `--resume` continues from the
newest intact checkpoint exactly (weights, AdamW moments, data position, RNG).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from transmamba.hardware.precision import resolve_amp
from transmamba.io import checkpoint as ckpt
from transmamba.ops.validate import NumericalError
from transmamba.training import fsdp, heap
from transmamba.training.rng import get_rng_state, set_rng_state
from transmamba.training.memory import check_device, check_fits, state_bytes
from transmamba.training.metrics import MetricsLog, plot_loss_curve, read_metrics_header
from transmamba.training.optim import lr_at, make_optimizer
from transmamba.training.run_lock import RunLock

# The train-section keys the engine reads (recipes add their own keys beside them).
ENGINE_DEFAULTS: dict = {
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    "eps": 1e-8,
    "grad_clip": 1.0,  # 0: no clipping
    "grad_accum": 1,  # micro-batches per optimizer step (per rank)
    "log_every": 10,  # 0: only the last step
    "eval_every": 200,  # 0: only after the last step
    "ckpt_every": 500,  # 0: no checkpoints
    "keep_checkpoints": 2,  # 0: keep all
    "halt_at_step": None,  # stop early (with a checkpoint); the schedule still follows the full budget
    "amp": "auto",  # auto | none | bf16 (autocast; fp32 master weights); auto: bf16 where it is fast
    "threads": None,  # CPU intra-op threads (None: torch's default)
    "progress": True,  # tqdm bar on rank 0
    "compile": False,  # torch.compile the step module
    "retain_heap": True,  # keep freed memory for reuse (training.heap): no per-step page faults
    "skip_memory_check": False,  # start even where the memory estimate exceeds the device's (training/memory.py)
    "parallel": "ddp",  # ddp | fsdp (FSDP2 fully_shard per block, training/fsdp.py)
    "activation_checkpointing": False,  # recompute each block's activations in the backward pass
}


# Data-parallel kinds of accelerate the loop supports (FSDP / DeepSpeed shard the parameters: not yet).
SUPPORTED_DISTRIBUTED = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_SDAA",
                         "MULTI_HPU", "MULTI_NEURON")
RATE_KEYS = {"tokens": "tok_per_s", "images": "img_per_s"}  # metrics.csv throughput column per unit


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a NaN/Inf loss, gradient norm or parameter; the message names the step
    and the last good checkpoint."""


@dataclass
class Run:
    """What a recipe gives the engine.

    step_module: nn.Module; forward(batch, step) -> (loss, {name: scalar tensor}); its trainable
        parameters are optimised (submodules it holds outside its parameters, e.g. a frozen teacher
        kept in a plain attribute, are not).
    batches: start_step -> iterator of GLOBAL batches (tuples; tensors are split on dim 0 across
        ranks and micro-batches, anything else is passed as is). Must be deterministic.
    saved: the module whose state a checkpoint holds (default: step_module.model).
    evaluate: model -> {metric: float}, on rank 0 every eval_every steps and after the last one.
    after_eval: (step, metrics) -> None on rank 0 after each evaluation (e.g. save the student).
    examples_unit: ("tokens", n) -> each example counts n tokens; ("images", 1) ...
    fingerprint: a dict that must equal the one saved in the checkpoint to resume (e.g. the model
        config); the first differing key is named.
    """

    name: str
    step_module: nn.Module
    batches: Callable[[int], Iterator[Any]]
    total_steps: int
    tcfg: dict
    out_dir: Path
    config: dict
    saved: nn.Module | None = None
    evaluate: Callable[[nn.Module], dict] | None = None
    after_eval: Callable[[int, dict], None] | None = None
    unit: str = "tokens"
    unit_per_example: int = 1
    metric_fields: list[str] = field(default_factory=list)
    lr_scale: dict | None = None
    fingerprint: dict | None = None
    best_key: str | None = None  # evaluation metric whose minimum is tracked ("val_loss")
    device: str = "auto"


def is_main_process() -> bool:
    """True on rank 0 or without distributed training (torchrun and `accelerate launch` set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """The number of processes of this run (torchrun and `accelerate launch` set WORLD_SIZE), 1 without."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def main_process_choice(obj: Any) -> Any:
    """Rank 0's `obj` on every rank when a process group is up (a choice that must not differ
    between ranks, e.g. which layers keep attention), else `obj` itself."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _say(msg: str, bar) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, file=sys.stderr)


def _optimizer_tensors(model: nn.Module, optimizer) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every optimizer state tensor, named "<key> of parameter <name>"."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(f"{key} of parameter {names.get(id(p), '?')}", v) for g in optimizer.param_groups for p in g["params"]
            for key, v in optimizer.state.get(p, {}).items() if isinstance(v, torch.Tensor)]


def _earlier(root: Path, bad: Path) -> str:
    """What to do instead of resuming from the diverged checkpoint `bad`: the one before it, if any."""
    older = [p for _, p in ckpt.list_checkpoints(root) if p.name < bad.name]
    if older:
        return (f"the checkpoint before it is {older[-1]}: delete {bad.name} to resume from there, "
                f"with a lower train.lr")
    return "there is no earlier checkpoint: start afresh (another --out_dir) with a lower train.lr"


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def shard(batch: Any, index: int, parts: int) -> tuple[Any, int]:
    """(this part of the batch, its number of examples): tensors split on dim 0 into `parts`
    contiguous pieces (torch.tensor_split), other entries passed unchanged."""
    items = batch if isinstance(batch, (tuple, list)) else (batch,)
    out, n = [], None
    for t in items:
        if isinstance(t, torch.Tensor):
            t = torch.tensor_split(t, parts)[index]
            n = t.shape[0] if n is None else n
        out.append(t)
    if n is None:
        raise TypeError("a training batch must hold at least one tensor (batch dimension first)")
    return (tuple(out) if isinstance(batch, (tuple, list)) else out[0]), n


def batch_size_of(batch: Any) -> int:
    return shard(batch, 0, 1)[1]


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(t, device) for t in batch)
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def _accelerator(device: str):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Layers past/before their TransPoint leave the other path's parameters unused in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    check_device(device)  # "cuda" on a machine without one is refused, not run on the CPU
    # accelerate runs multi-process CPU training (gloo) only when told cpu=True
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    acc = Accelerator(cpu=cpu, mixed_precision="no", kwargs_handlers=[ddp])
    kind = getattr(acc.distributed_type, "name", str(acc.distributed_type))
    if kind not in SUPPORTED_DISTRIBUTED:
        raise ValueError(f"accelerate distributed_type {kind} is not supported by the transmamba engine (checkpoints "
                         f"and rank-0 evaluation need every parameter on every rank); use DDP: "
                         f"{', '.join(SUPPORTED_DISTRIBUTED)} (configs/accelerate/multi_gpu.yaml)")
    return acc


def fit(run: Run, *, resume: bool = False) -> dict:
    """Train `run` to run.total_steps (or train.halt_at_step) and return the summary dict."""
    t = run.tcfg
    acc = _accelerator(run.device)
    device, world, rank, main = acc.device, acc.num_processes, acc.process_index, acc.is_main_process
    if t.get("threads"):
        torch.set_num_threads(int(t["threads"]))
    if t.get("retain_heap", True):
        heap.retain_freed_memory()
    if device.type == "cuda" and t.get("tf32", True):
        torch.backends.cuda.matmul.allow_tf32 = True
    out_dir = Path(run.out_dir)
    root = out_dir / "checkpoints"
    saved = run.saved if run.saved is not None else run.step_module.model
    accum = int(t.get("grad_accum") or 1)
    lock = RunLock(out_dir, enabled=main)
    with lock:
        return _fit(run, acc, device, world, rank, main, out_dir, root, saved, accum, resume)


def _fit(run, acc, device, world, rank, main, out_dir, root, saved, accum, resume) -> dict:
    t = run.tcfg
    precision = main_process_choice(resolve_amp(t.get("amp", "auto"), device))  # every rank runs rank 0's pick
    amp = precision.amp
    latest = ckpt.latest_checkpoint(root, verify=True)
    if latest is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds checkpoints (newest {latest.name}); pass --resume "
                              f"to continue that run, or choose another --out_dir")
    if resume and latest is None and main:
        print(f"--resume: no intact checkpoint in {root}, starting from scratch", file=sys.stderr)

    if device.type == "cuda":  # on the CPU the recipe checked before building the model (training/memory.py)
        ps = list(run.step_module.parameters())
        trainable = sum(p.numel() for p in ps if p.requires_grad)
        shards = world if t.get("parallel", "ddp") == "fsdp" else 1
        check_fits(state_bytes(trainable, sum(p.numel() for p in ps) - trainable, shards=shards), device,
                   what=f"training {run.name}'s {trainable / 1e6:.1f}M parameters (weights, gradients and AdamW "
                        f"state alone)", skip=bool(t.get("skip_memory_check")))
    run.step_module.to(device)
    optimizer = make_optimizer([run.step_module], t, run.lr_scale, device)
    step, units, elapsed0, best = 0, 0, 0.0, math.inf
    last_eval: dict = {}
    if main:
        ckpt.clean_partial(root)
    rate_key = RATE_KEYS.get(run.unit, f"{run.unit}_per_s")
    fields = ["step", run.unit, "train_loss", "lr", "grad_norm", rate_key, "elapsed_s", "amp"]
    fields += [f for f in run.metric_fields if f not in fields]
    if main and not (resume and latest is not None):
        (out_dir / "metrics.csv").unlink(missing_ok=True)  # a fresh run: rows of an earlier attempt go
    elif main and (out_dir / "metrics.csv").exists() and "amp" not in read_metrics_header(out_dir / "metrics.csv"):
        fields.remove("amp")  # resuming a run logged before the amp column existed
    metrics = MetricsLog(out_dir / "metrics.csv", fields) if main else None
    if resume and latest is not None:
        saved_cfg = ckpt.read_config(latest)
        if run.fingerprint is not None:
            # checkpoints from before the engine carry no fingerprint: compare the sections they have
            saved_fp = saved_cfg.get("fingerprint") or {k: saved_cfg[k] for k in run.fingerprint if k in saved_cfg}
            changed = _diff_keys(saved_fp, {k: run.fingerprint.get(k) for k in saved_fp}) if saved_fp else []
            if changed:
                raise ValueError(f"cannot resume {latest}: the run's config differs in {', '.join(changed)}")
        restored = fsdp.restore(latest, run.step_module, saved, optimizer, t.get("parallel", "ddp"))
        if not restored.get("deferred"):  # a diverged checkpoint is refused by name, not by a kernel later
            bad = ckpt.first_nonfinite(list(saved.named_parameters()) + _optimizer_tensors(saved, optimizer))
            if bad is not None:
                raise NonFiniteLossError(f"cannot resume from {latest}: {bad} is not finite (the run had diverged "
                                         f"when it was written); {_earlier(root, latest)}")
        st = restored["state"]
        step = restored["step"]
        units = int(st.get("units", st.get("tokens", 0)))
        elapsed0 = float(st.get("elapsed_s") or 0.0)
        best = math.inf if st.get("best") is None else float(st["best"])
        last_eval = st.get("last_eval") or st.get("last_val") or {}
        dropped = metrics.truncate_after(step) if main else 0
        if st.get("rng") is not None:  # None: a checkpoint not written by a run (save_checkpoint without rng)
            set_rng_state(st["rng"])  # last: building the modules consumed RNG
        if main:
            print(f"resumed from {latest} at step {step}/{run.total_steps}"
                  + (f" (dropped {dropped} metric rows logged after it)" if dropped else ""), file=sys.stderr)
    start_step = step

    sharded = None  # train.parallel fsdp: the FSDP2 copy being trained (training/fsdp.py)
    if t.get("parallel", "ddp") == "fsdp":
        sharded = fsdp.Sharded(run.step_module, saved, optimizer, device, amp, bool(t.get("activation_checkpointing")))
        if resume and latest is not None and restored.get("deferred"):
            sharded.load(latest)
        module, optimizer = sharded.module, sharded.optimizer
    else:
        if t.get("activation_checkpointing"):
            fsdp.checkpoint_blocks(saved)
        module, optimizer = acc.prepare(run.step_module, optimizer)
    fwd = torch.compile(module) if t.get("compile") else module
    params = [p for g in optimizer.param_groups for p in g["params"]]
    halt = t.get("halt_at_step")
    stop_at = run.total_steps if halt is None else min(run.total_steps, int(halt))
    every = {k: int(t.get(k) or 0) for k in ("log_every", "eval_every", "ckpt_every")}
    max_norm = float(t["grad_clip"]) if t.get("grad_clip") else math.inf
    bar = None
    if main and t.get("progress", True):
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total_steps, initial=step, desc=run.name, unit="step", dynamic_ncols=True,
                   mininterval=1.0, file=sys.stderr)
    n_params = sum(p.numel() for p in (saved if sharded is None else sharded.saved).parameters())
    if main:
        _say(f"[{run.name}] {n_params / 1e6:.2f}M params, {run.total_steps} steps, {world} process(es) on "
             f"{device}, amp: {precision}", bar)

    t_start = time.perf_counter()
    win_t0, win_units, win_loss, win_n = time.perf_counter(), 0, 0.0, 0
    last_saved, train_loss, gnorm, rate = -1, math.nan, math.nan, 0.0
    losses: list[float] = []

    def good_checkpoint() -> str:
        try:
            good = ckpt.latest_checkpoint(root, verify=True)
        except ValueError as e:  # every checkpoint there is damaged
            return f"no intact checkpoint in {root} ({e})"
        return f"the last good checkpoint is {good}" if good is not None else f"no checkpoint was written in {root}"

    resumed_from = latest if resume else None

    def diverged(what: str, at: int, lr_now: float, *, in_forward: bool = True) -> NonFiniteLossError:
        """The error for weights that went non-finite (or give non-finite values) at step `at`;
        in_forward: found in that step's forward/backward, i.e. in the weights the step started from."""
        if in_forward and resumed_from is not None and at == start_step + 1:
            return NonFiniteLossError(
                f"cannot resume from {resumed_from}: its weights diverge at once ({what} at step {at}, lr "
                f"{lr_now:.3g}), so the run had diverged when it was written; {_earlier(root, resumed_from)}")
        return NonFiniteLossError(f"training diverged at step {at}: {what} (lr {lr_now:.3g}); stopping. "
                                  f"{good_checkpoint()}")

    pending: list = []  # [(step, state, rng)]: a checkpoint waiting for a finite forward from its weights

    def save(at_step: int, *, now: bool = False) -> None:
        """Checkpoint the weights after step `at_step`. Written once the next step's forward and
        backward from these weights ran without a kernel refusing NaN/Inf (`flush`, before that
        step's update), so weights that give Inf inside a kernel (e.g. a finite A_log whose exp
        overflows) are never saved; now (the end of the loop, FSDP): written at once. A NaN loss
        from weights no kernel refused is caught at the next step, and a resume from such a
        checkpoint is refused by name at its first step. save_checkpoint refuses NaN/Inf tensors."""
        state = {"units": units, "tokens": units, "elapsed_s": elapsed0 + time.perf_counter() - t_start,
                 "best": best if math.isfinite(best) else None, "last_eval": last_eval,
                 "metrics": {"train_loss": train_loss, **last_eval}, "total_steps": run.total_steps}
        pending[:] = [(at_step, state, get_rng_state())]
        if now or sharded is not None:
            flush()

    def flush() -> None:
        nonlocal last_saved
        if not pending:
            return
        at_step, state, rng = pending.pop()
        if main or sharded is not None:  # every rank writes its shards
            cfg = {**run.config, "fingerprint": run.fingerprint} if run.fingerprint is not None else run.config
            try:  # save_checkpoint refuses NaN/Inf weights or optimizer state before writing anything
                if sharded is not None:
                    sharded.save(root / ckpt.step_dir_name(at_step), at_step, cfg, state)
                else:
                    ckpt.save_checkpoint(root / ckpt.step_dir_name(at_step), saved, optimizer, at_step, cfg, state,
                                         rng=rng)
            except ckpt.NonFiniteTensorError as e:
                raise NonFiniteLossError(f"{e} at step {at_step}; not saving. {good_checkpoint()}") from e
            if main:
                ckpt.prune_checkpoints(root, int(t.get("keep_checkpoints") or 0))
        acc.wait_for_everyone()
        last_saved = at_step

    def evaluate() -> dict:
        res: dict = {}
        gather = sharded.gathered() if sharded is not None and run.evaluate is not None else contextlib.nullcontext()
        with gather:  # under fsdp: the whole weights in `saved` on rank 0 (every rank takes part)
            if main and run.evaluate is not None:
                res = run.evaluate(saved)
                if run.after_eval is not None:
                    run.after_eval(step, res)
        acc.wait_for_everyone()
        return res

    module.train()
    batches = run.batches(step)
    try:
        while step < stop_at:
            lr = lr_at(step, lr=float(t["lr"]), min_lr=float(t["min_lr"]), warmup_steps=int(t["warmup_steps"]),
                       total_steps=run.total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            batch = next(batches)
            n_global = batch_size_of(batch)
            if n_global < world * accum:  # an empty shard would leave a rank out of the gradient sync
                raise ValueError(f"a batch of {n_global} examples (step {step + 1}) cannot be split over {world} "
                                 f"process(es) x {accum} micro-batches (train.grad_accum); use a larger "
                                 f"train.batch_size or fewer processes")
            local, n_local = shard(batch, rank, world)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            parts_sum: dict[str, torch.Tensor] = {}
            try:
                for m in range(accum):
                    micro, n_micro = shard(local, m, accum)
                    if n_micro == 0:
                        continue
                    w = n_micro * world / n_global
                    sync = sharded.sync(m == accum - 1) if sharded is not None else \
                        contextlib.nullcontext() if m == accum - 1 else acc.no_sync(module)
                    with sync:
                        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16" and sharded is None):  # resolved once above; fsdp: its MixedPrecisionPolicy
                            loss, parts = fwd(_to(micro, device), step)
                        acc.backward(loss.float() * w) if sharded is None else (loss.float() * w).backward()
                    loss_sum += loss.detach().float() * w
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + torch.as_tensor(v, device=device).detach().float() * w
            except (ValueError, RuntimeError) as e:  # a kernel refusing Inf/NaN values made from the weights
                bad = ckpt.first_nonfinite(list(saved.named_parameters()) if sharded is None
                                           else sharded.local_named_parameters())
                if bad is None and not (isinstance(e, NumericalError) and (step > start_step or resumed_from)):
                    raise
                what = f"parameter {bad!r} is not finite" if bad else f"the weights give {e}"
                raise diverged(what, step + 1, lr) from e
            if pending:  # no kernel refused what the pending checkpoint's weights computed: write it
                t_save = time.perf_counter()
                flush()
                win_t0 += time.perf_counter() - t_save  # keep checkpoint writing out of the throughput
            gnorm_t = acc.clip_grad_norm_(params, max_norm) if sharded is None else sharded.clip_grad_norm_(max_norm)
            vals = torch.stack([loss_sum, torch.as_tensor(gnorm_t, device=device).float(), *parts_sum.values()])
            if world > 1:
                vals = acc.reduce(vals, reduction="mean")
                vals[1] = torch.as_tensor(gnorm_t, device=device).float()  # already global
            vals = vals.tolist()
            loss_v, gnorm = vals[0], vals[1]
            parts_v = dict(zip(parts_sum, vals[2:]))
            if not math.isfinite(loss_v):
                if resumed_from is not None and step == start_step:
                    raise diverged(f"a {loss_v} training loss", step + 1, lr)
                raise NonFiniteLossError(f"training loss is {loss_v} at step {step + 1} (lr {lr:.3g}); stopping. "
                                         f"{good_checkpoint()}")
            if not math.isfinite(gnorm):
                if resumed_from is not None and step == start_step:
                    raise diverged(f"a {gnorm} gradient norm", step + 1, lr)
                raise NonFiniteLossError(f"gradient norm is {gnorm} at step {step + 1} (loss {loss_v:.4f}, "
                                         f"lr {lr:.3g}); stopping. {good_checkpoint()}")
            try:
                optimizer.step()
            except RuntimeError as e:  # AdamW's step lr / (1 - beta1^t) beyond float32: "cannot be converted"
                if "overflow" not in str(e):
                    raise
                raise diverged(f"the AdamW update overflows float32 ({e})", step + 1, lr, in_forward=False) from e
            step += 1
            units += n_global * run.unit_per_example
            win_units += n_global * run.unit_per_example
            win_loss += loss_v
            win_n += 1
            losses.append(loss_v)

            last = step == stop_at
            do_eval = (every["eval_every"] and step % every["eval_every"] == 0) or step == run.total_steps
            do_save = every["ckpt_every"] > 0 and (step % every["ckpt_every"] == 0 or last)
            do_log = do_eval or last or (every["log_every"] and step % every["log_every"] == 0)
            if do_log:
                train_loss = win_loss / win_n
                rate = win_units / max(time.perf_counter() - win_t0, 1e-9)
                row = {"step": step, run.unit: units, "train_loss": train_loss, "lr": lr, "grad_norm": gnorm,
                       rate_key: rate, **({"amp": amp} if "amp" in fields else {}), **{k: v for k, v in parts_v.items() if k in fields}}
                if do_eval:
                    try:
                        ev = evaluate()
                    except NumericalError as e:  # a kernel refusing Inf/NaN made from the updated weights
                        raise diverged(f"the weights after it give {e} in evaluation", step, lr, in_forward=False) from e
                    if ev:
                        last_eval = ev
                        if run.best_key and run.best_key in ev:
                            best = min(best, float(ev[run.best_key]))
                        row.update({k: v for k, v in ev.items() if k in fields})
                        _say(f"step {step}/{run.total_steps}: train {train_loss:.4f}, "
                             + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float))
                             + f", {rate:,.0f} {run.unit}/s", bar)
                row["elapsed_s"] = elapsed0 + time.perf_counter() - t_start
                if main:
                    metrics.log(**row)
                win_t0, win_units, win_loss, win_n = time.perf_counter(), 0, 0.0, 0
            if bar is not None:
                bar.set_postfix(loss=f"{loss_v:.3f}", **{rate_key.replace("_per", ""): f"{rate:,.0f}"}, lr=f"{lr:.2e}",
                                refresh=False)
                bar.update(1)
            if do_save:
                save(step)
    finally:
        if bar is not None:
            bar.close()
    flush()  # the last step's checkpoint: no forward follows it
    if step < run.total_steps and last_saved != step and step > start_step:
        save(step, now=True)  # halted: always leave a checkpoint to resume from

    elapsed = elapsed0 + time.perf_counter() - t_start
    png = None
    if main and (out_dir / "metrics.csv").exists():
        png = plot_loss_curve(out_dir / "metrics.csv", out_dir / "loss.png", x=run.unit,
                              title=f"{run.name} ({n_params / 1e6:.1f}M params)")
    acc.wait_for_everyone()
    state_bytes = fsdp.state_bytes(params, optimizer)
    if sharded is not None:
        sharded.finish()  # the final weights back in the recipe's modules, on every rank
    newest = ckpt.latest_checkpoint(root) if main else None
    return {
        "name": run.name, "params": n_params, "step": step, "total_steps": run.total_steps, run.unit: units,
        "halted": step < run.total_steps, "final_train_loss": train_loss, "last_eval": last_eval,
        "best": best if math.isfinite(best) else None, rate_key: units / elapsed if elapsed > 0 else None,
        "elapsed_s": elapsed, "device": str(device), "processes": world, "amp": amp,
        "amp_reason": precision.reason, "parallel": t.get("parallel", "ddp"), "state_bytes": state_bytes,
        "out_dir": str(out_dir), "checkpoint": str(newest) if newest else None,
        "metrics_csv": str(out_dir / "metrics.csv"), "loss_png": str(png) if png else None, "losses": losses,
    }
