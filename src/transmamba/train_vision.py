"""Vision training for TransMamba-Adapt: `train-teacher` (a ViT) and `distill` (a Mamba student).

    transmamba train-teacher [--config configs/vision/teacher-fmnist.yaml] [--key value ...]
    transmamba distill --config configs/vision/vim-fmnist.yaml [--key value ...]

`distill` modes (config `mode`):
    transmamba  load the teacher, subclone it into the student (init.subclone, init.layers = n),
                then train with  L = alpha L_task + (1 - alpha) L_dir + kd_weight L_kd
    scratch     the same student and recipe, no teacher: own init, L = L_task
Ablation switches: init.subclone, init.layers, distill.enabled, distill.adaptive, distill.form.

Each run writes to out_dir: metrics.csv (one row per log step / eval), model.safetensors +
config.json (written atomically: temporary file, then os.replace) and result.json (final
test top-1, timings, the resolved config). Progress bars use tqdm.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from transmamba.config import dump_yaml, load_config
from transmamba.data.augment import shift_flip
from transmamba.data.fashion_mnist import load_image_dataset, subset, to_tensors
from transmamba.data.moving_fmnist import make_moving_clips, num_classes
from transmamba.run_log import MetricsLog

DATA_DEFAULTS = {
    "dataset": "fashion_mnist",  # fashion_mnist | digits | moving_fmnist | moving_digits
    "root": None,
    "fraction": 1.0,
    "seed": 0,
    "calib_size": 256,
    "video": {"frames": 4, "canvas": 32, "speed": 2, "label_mode": "class",
              "train_clips": 12000, "test_clips": 2000},
}
TRAIN_DEFAULTS = {
    "epochs": 2, "batch_size": 128, "eval_batch_size": 500, "lr": 1e-3, "weight_decay": 0.05,
    "warmup_steps": 50, "grad_clip": 1.0, "seed": 0, "max_steps": None, "log_every": 20,
    "threads": None, "progress": True, "save": True,
    "augment": {"shift": 0, "flip": False},  # data.augment.shift_flip on each training batch (images only)
}
TEACHER_DEFAULTS = {
    "out_dir": "runs/vision/teacher-fmnist",
    "data": copy.deepcopy(DATA_DEFAULTS),
    "vit": {"img_size": None, "patch_size": 4, "d_model": 128, "depth": 4, "num_heads": 4,
            "d_ff": 256, "qkv_bias": True, "norm_eps": 1e-6},
    "train": {**copy.deepcopy(TRAIN_DEFAULTS), "epochs": 3},
}
DISTILL_DEFAULTS = {
    "name": None,
    "out_dir": "runs/vision/student",
    "mode": "transmamba",  # transmamba | scratch
    "teacher": "runs/vision/teacher-fmnist",
    "data": copy.deepcopy(DATA_DEFAULTS),
    "student": {"arch": "vim", "img_size": None, "patch_size": 4, "d_model": 96, "depth": 4,
                "d_state": 16, "d_conv": None, "expand": 2.0, "mlp_ratio": None, "norm": None,
                "bias": False, "tubelet": 1},
    "init": {"subclone": True, "layers": None, "mixer": "mapped", "mean_decay": 1.0,
             "lin_scale": 0.0, "lr_scale": 1.0, "calibrate": False, "calibrate_mlp": False,
             "calibrate_head": False, "ridge": 1e-3},
    "distill": {"enabled": True, "form": "paper", "adaptive": True, "alpha": 0.9,
                "kd_weight": 0.0, "temperature": 2.0, "calib_hidden": None, "eps": 0.05},
    "train": copy.deepcopy(TRAIN_DEFAULTS),
}
METRIC_FIELDS = ["step", "epoch", "train_loss", "task_loss", "distill_loss", "kd_loss", "mean_cos",
                 "lr", "test_loss", "test_top1", "elapsed_s"]


# ---------------------------------------------------------------------------------------------
# data


def load_data(dcfg: dict) -> dict:
    """{"train": (x, y), "test": (x, y), "num_classes", "img_size", "video"} as float/int64 tensors.

    Images "n 1 H W"; moving clips (synthetic motion of real images) "n t 1 H W". Images are
    normalised with the FULL training split's mean/std (so every `fraction` sees the same inputs),
    clips with their training clips' mean/std. `fraction` keeps a class-stratified subset of the
    training images (or that share of the training clips)."""
    name = dcfg["dataset"]
    video = name.startswith("moving_")
    base = {"moving_fmnist": "fashion_mnist", "moving_digits": "digits"}.get(name, name)
    full_img, full_lab = load_image_dataset(base, "train", root=dcfg.get("root"))
    te_img, te_lab = load_image_dataset(base, "test", root=dcfg.get("root"))
    n_cls = int(max(full_lab.max(), te_lab.max())) + 1
    if video:
        v = dcfg["video"]
        n_train = int(round(v["train_clips"] * dcfg["fraction"]))
        kw = dict(frames=v["frames"], canvas=v["canvas"], speed=v["speed"], label_mode=v["label_mode"])
        tr_img, tr_lab = make_moving_clips(full_img, full_lab, n_train, seed=dcfg["seed"], **kw)
        te_img, te_lab = make_moving_clips(te_img, te_lab, v["test_clips"], seed=dcfg["seed"] + 1, **kw)
        n_cls = num_classes(n_cls, v["label_mode"])
        stats_src = tr_img
    else:
        tr_img, tr_lab = subset(full_img, full_lab, dcfg["fraction"], dcfg["seed"])
        stats_src = full_img  # the same normalisation whatever the fraction
    mean, std = float(stats_src.mean()) / 255.0, float(stats_src.std()) / 255.0
    train = to_tensors(tr_img, tr_lab, mean, std)
    test = to_tensors(te_img, te_lab, mean, std)
    return {"train": train, "test": test, "num_classes": n_cls, "img_size": int(tr_img.shape[-1]),
            "video": video, "frames": int(tr_img.shape[1]) if video else 1,
            "fill": -mean / max(std, 1e-6)}  # a black pixel after normalisation


def _batches(n: int, batch_size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for s in range(0, n, batch_size):
        yield order[s:s + batch_size]


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) over (x, y)."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for idx in _batches(len(x), batch_size, None):
        logits = model(x[idx])
        loss += float(F.cross_entropy(logits, y[idx], reduction="sum"))
        correct += int((logits.argmax(-1) == y[idx]).sum())
    model.train(was)
    return loss / len(x), correct / len(x)


# ---------------------------------------------------------------------------------------------
# optimisation


def param_groups(modules, weight_decay: float, lr_scale: dict | None = None) -> list[dict]:
    """AdamW groups: no decay for biases, norms, embeddings/tokens, A_log, D, 1-D params.

    lr_scale: {id(param): s} puts those params into their own groups with "lr_scale": s (the
    training loop sets such a group's lr to s * the schedule's lr); every group carries "lr_scale"."""
    lr_scale = lr_scale or {}
    groups: dict[tuple[bool, float], list] = {}
    seen = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            skip = (p.dim() < 2 or getattr(p, "_no_weight_decay", False) or
                    any(k in name for k in ("pos_embed", "cls_token", "dist_token", "temporal_pos",
                                            "dir_embed", "A_log")))
            groups.setdefault((not skip, float(lr_scale.get(id(p), 1.0))), []).append(p)
    keys = [(True, 1.0), (False, 1.0)] + sorted(k for k in groups if k[1] != 1.0)
    return [{"params": groups.get(k, []), "weight_decay": weight_decay if k[0] else 0.0,
             "lr_scale": k[1]} for k in keys]


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


class _threads:
    """Context: torch.set_num_threads(n) inside (n None: unchanged), the previous count restored after.
    On a shared, busy CPU one thread is often several times faster than two (no spin-waiting)."""

    def __init__(self, n):
        self.n, self.prev = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)


def train_loop(model, n_train: int, batch_loss, evaluate_fn, tcfg: dict, out_dir: Path, *,
               fields=METRIC_FIELDS, extra_modules=(), save_fn=None, desc: str = "train",
               lr_scale: dict | None = None) -> dict:
    """Generic loop: AdamW + warmup/cosine, tqdm bar, metrics CSV, eval each epoch, atomic saves.

    batch_loss(idx) -> (loss, {"task_loss", ...} floats) for the training examples idx of n_train;
    evaluate_fn() -> {"test_...": value} each epoch (logged where `fields` has the column);
    save_fn(epoch, step, evaluation); lr_scale: {id(param): multiplier of the scheduled lr}.
    Returns the last evaluation, steps, losses and times."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(int(tcfg["seed"]))
    steps_per_epoch = math.ceil(n_train / tcfg["batch_size"])
    total = steps_per_epoch * int(tcfg["epochs"])
    if tcfg.get("max_steps"):
        total = min(total, int(tcfg["max_steps"]))
    opt = torch.optim.AdamW(param_groups([model, *extra_modules], tcfg["weight_decay"], lr_scale),
                            lr=tcfg["lr"], betas=(0.9, 0.999))
    params = [p for g in opt.param_groups for p in g["params"]]
    log = MetricsLog(out_dir / "metrics.csv", fields)
    t0, step, history = time.time(), 0, []
    bar = tqdm(total=total, desc=desc, disable=not tcfg.get("progress", True), mininterval=2.0,
               file=sys.stderr)
    model.train()
    for epoch in range(int(tcfg["epochs"])):
        for idx in _batches(n_train, tcfg["batch_size"], gen):
            if step >= total:
                break
            lr = lr_at(step, total, tcfg["lr"], int(tcfg["warmup_steps"]))
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            loss, parts = batch_loss(idx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(params, tcfg["grad_clip"])
            opt.step()
            step += 1
            history.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.3f}", task=f"{parts['task_loss']:.3f}")
            if step % int(tcfg["log_every"]) == 0 or step == 1:
                log.log(step=step, epoch=epoch, train_loss=history[-1], lr=lr,
                        elapsed_s=round(time.time() - t0, 2), **parts)
        ev = evaluate_fn()
        log.log(step=step, epoch=epoch, elapsed_s=round(time.time() - t0, 2),
                **{k: v for k, v in ev.items() if k in fields})
        bar.write(f"[{desc}] epoch {epoch}: step {step}, "
                  + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if v is not None))
        if save_fn is not None and tcfg.get("save", True):
            save_fn(epoch, step, ev)
        if step >= total:
            break
    bar.close()
    return {"steps": step, **ev, "train_loss_first": history[0],
            "train_loss_last": float(np.mean(history[-10:])), "elapsed_s": round(time.time() - t0, 2),
            "losses": history}


def run_training(model, data: dict, tcfg: dict, out_dir: Path, loss_fn, *, extra_modules=(),
                 save_fn=None, desc: str = "train", lr_scale: dict | None = None) -> dict:
    """`train_loop` for image/clip classification: loss_fn(x, y) -> (loss, {"task_loss",
    "distill_loss", "kd_loss", "mean_cos"} floats), test loss and top-1 each epoch,
    save_fn(epoch, step, top1)."""
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    aug = tcfg.get("augment") or {}
    if aug.get("shift") or aug.get("flip"):
        if data["video"]:
            raise ValueError("train.augment (shift/flip) is for image datasets; clips would lose their motion labels")
        gen = torch.Generator().manual_seed(int(tcfg["seed"]) + 1)
        fill = float(data.get("fill", 0.0))

        def batch(idx):
            return shift_flip(x_tr[idx], int(aug.get("shift") or 0), bool(aug.get("flip")), fill, gen)
    else:
        def batch(idx):
            return x_tr[idx]

    def evaluate_fn():
        loss, acc = evaluate(model, x_te, y_te, tcfg["eval_batch_size"])
        return {"test_loss": loss, "test_top1": acc}

    save = None if save_fn is None else (lambda epoch, step, ev: save_fn(epoch, step, ev["test_top1"]))
    return train_loop(model, len(x_tr), lambda idx: loss_fn(batch(idx), y_tr[idx]), evaluate_fn, tcfg,
                      out_dir, extra_modules=extra_modules, save_fn=save, desc=desc, lr_scale=lr_scale)


def _write_result(out_dir: Path, result: dict, cfg: dict) -> None:
    from transmamba.models.teachers import save_json_atomic

    res = {k: v for k, v in result.items() if k != "losses"}
    save_json_atomic({**res, "config": cfg}, out_dir / "result.json")


def _split_argv(argv):
    """(--config path or None, the remaining --key value overrides)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a path")
        path = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    else:
        for i, a in enumerate(argv):
            if a.startswith("--config="):
                path = a.split("=", 1)[1]
                argv = argv[:i] + argv[i + 1:]
                break
    return path, argv


# ---------------------------------------------------------------------------------------------
# train-teacher


def train_teacher(cfg: dict) -> dict:
    """Train a ViT teacher on cfg["data"] (frame-wise on moving clips); save it to cfg["out_dir"]."""
    with _threads(cfg["train"].get("threads")):
        return _train_teacher(cfg)


def _train_teacher(cfg: dict) -> dict:
    from transmamba.models.teachers import ViT, ViTConfig, save_vit

    tcfg = cfg["train"]
    _seed(int(tcfg["seed"]))
    data = load_data(cfg["data"])
    vit = {k: v for k, v in cfg["vit"].items() if v is not None}
    vit.setdefault("img_size", data["img_size"])
    vcfg = ViTConfig(in_chans=1, num_classes=data["num_classes"], **vit)
    model = ViT(vcfg)
    out = Path(cfg["out_dir"])

    def loss_fn(x, y):
        task = F.cross_entropy(model(x), y)
        return task, {"task_loss": task.item()}

    def save_fn(epoch, step, acc):
        save_vit(model, out, {"train_config": cfg, "epoch": epoch, "step": step, "test_top1": acc})

    result = run_training(model, data, tcfg, out, loss_fn, save_fn=save_fn, desc="teacher")
    _write_result(out, result, cfg)
    return result


def config_main(argv, defaults: dict, run, doc: str, hide=("losses",)) -> int:
    """A config-driven CLI: [--config FILE] [--section.key value ...]; -h prints `doc` and the
    defaults; runs `run(cfg)` and prints its result as JSON (without the keys in `hide`)."""
    path, overrides = _split_argv(argv)
    if overrides and overrides[0] in ("-h", "--help"):
        print(doc + "\nDefaults:\n" + dump_yaml(defaults))
        return 0
    res = run(load_config(path, overrides, defaults=defaults))
    print(json.dumps({k: v for k, v in res.items() if k not in hide}))
    return 0


def train_teacher_main(argv=None) -> int:
    """CLI: train-teacher [--config FILE] [--section.key value ...]."""
    return config_main(argv, TEACHER_DEFAULTS, train_teacher, __doc__)


# ---------------------------------------------------------------------------------------------
# distill


def teacher_initialised_params(student, n_layers: int) -> list:
    """The student's parameters that `transfer_vit_to_student(..., n_layers)` fills from the teacher:
    embeddings, class/position tokens, final norm, head and every parameter of blocks 0..n-1."""
    prefixes = ("patch_embed.", "cls_token", "pos_embed", "temporal_pos", "norm_f.", "head.",
                *(f"blocks.{i}." for i in range(n_layers)))
    return [p for name, p in student.named_parameters() if name.startswith(prefixes)]


def build_distill_run(cfg: dict, data: dict):
    """Student, teacher (or None), the DirectionalDistillLoss (or None) and the init report."""
    from transmamba.adapt.block_calibration import calibrate_head_, calibrate_out_proj_
    from transmamba.adapt.distill import DirectionalDistillLoss
    from transmamba.adapt.layered_init import default_init_layers, transfer_vit_to_student
    from transmamba.models.teachers import load_pretrained_vit
    from transmamba.models.vision import build_student

    mode = cfg["mode"]
    if mode not in ("transmamba", "scratch"):
        raise ValueError(f"mode must be 'transmamba' or 'scratch', got {mode!r}")
    scfg = {k: v for k, v in cfg["student"].items() if v is not None}
    scfg.setdefault("img_size", data["img_size"])
    scfg["num_classes"] = data["num_classes"]
    if data["video"]:
        scfg["frames"] = data["frames"]
    student = build_student(scfg)
    teacher, dloss, report = None, None, {"copied": [], "init_layers": 0}
    use_init = mode == "transmamba" and cfg["init"]["subclone"]
    use_distill = mode == "transmamba" and cfg["distill"]["enabled"]
    if use_init or use_distill:
        teacher = load_pretrained_vit(cfg["teacher"])
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    resid_idx = None
    if use_init:
        n = cfg["init"]["layers"]
        n = default_init_layers(student.cfg.depth) if n is None else int(n)
        x_tr = data["train"][0]
        calib = x_tr[torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(1))
                     [: cfg["data"]["calib_size"]]]
        rep = transfer_vit_to_student(teacher, student, n, calib=calib,
                                      mixer_init=cfg["init"]["mixer"],
                                      mean_decay=float(cfg["init"]["mean_decay"]),
                                      lin_scale=float(cfg["init"]["lin_scale"]))
        resid_idx = rep["resid_idx"]
        if cfg["init"].get("calibrate"):
            mlp = rep["free_channels"] if cfg["init"].get("calibrate_mlp") else None
            rep["copied"] += calibrate_out_proj_(teacher, student, n, calib, resid_idx,
                                                 float(cfg["init"]["ridge"]), mlp)
        if cfg["init"].get("calibrate_head"):
            rep["copied"].append(calibrate_head_(teacher, student, calib, float(cfg["init"]["ridge"])))
        report = {"copied": rep["copied"], "init_layers": n}
        s = float(cfg["init"].get("lr_scale", 1.0))
        if s != 1.0:
            report["lr_scale"] = {id(p): s for p in teacher_initialised_params(student, n)}
    if use_distill:
        d = cfg["distill"]
        dloss = DirectionalDistillLoss(student.cfg.depth, teacher.cfg.depth, student.cfg.d_model,
                                       teacher.cfg.d_model, form=d["form"], adaptive=d["adaptive"],
                                       hidden=d["calib_hidden"], eps=d["eps"], index=resid_idx)
    return student, teacher, dloss, report


def distill(cfg: dict) -> dict:
    """Run one `distill` config (see module docstring); returns the result dict."""
    with _threads(cfg["train"].get("threads")):
        return _distill(cfg)


def _distill(cfg: dict) -> dict:
    tcfg = cfg["train"]
    _seed(int(tcfg["seed"]))
    data = load_data(cfg["data"])
    student, teacher, dloss, report = build_distill_run(cfg, data)
    out = Path(cfg["out_dir"])
    d = cfg["distill"]
    alpha = float(d["alpha"]) if dloss is not None else 1.0
    kd_w = float(d["kd_weight"]) if teacher is not None and cfg["distill"]["enabled"] else 0.0
    perms = student.blocks[0].mixer.perms
    n_prefix = teacher.n_prefix if teacher is not None else 1

    def loss_fn(x, y):
        from transmamba.adapt.distill import kl_logit_loss, total_loss

        if dloss is None and not kd_w:
            task = F.cross_entropy(student(x), y)
            return task, {"task_loss": task.item()}
        logits, feats = student(x, return_directions=dloss is not None)
        task = F.cross_entropy(logits, y)
        parts = {"task_loss": task.item()}
        with torch.no_grad():
            t_logits, t_hidden, _ = teacher(x, return_hidden=True)
        dl = kd = None
        if dloss is not None:
            toks = [student.align_teacher_tokens(h, n_prefix) for h in t_hidden]
            dl, cos = dloss(feats, toks, perms)
            parts.update(distill_loss=dl.item(), mean_cos=cos.mean().item())
        if kd_w:
            kd = kl_logit_loss(logits, t_logits, d["temperature"])
            parts["kd_loss"] = kd.item()
        return total_loss(task, dl, alpha, kd, kd_w), parts

    def save_fn(epoch, step, acc):
        from transmamba.models.vision import save_student

        save_student(student, out, {"run_config": cfg, "epoch": epoch, "step": step, "test_top1": acc})

    init_acc = evaluate(student, *data["test"], tcfg["eval_batch_size"])[1] if report["copied"] else None
    result = run_training(student, data, tcfg, out, loss_fn,
                          extra_modules=[dloss] if dloss is not None else [], save_fn=save_fn,
                          desc=cfg.get("name") or student.cfg.arch, lr_scale=report.get("lr_scale"))
    result.update(init_top1=init_acc, init_layers=report["init_layers"], copied=report["copied"],
                  params=sum(p.numel() for p in student.parameters()), mode=cfg["mode"])
    if teacher is not None:  # a class-only teacher of class x direction labels is scored on the class
        x_test, y_test = data["test"]
        per_class = data["num_classes"] // teacher.cfg.num_classes
        if per_class > 1:
            y_test = torch.div(y_test, per_class, rounding_mode="floor")
            result["teacher_top1_on"] = "class"
        result["teacher_top1"] = evaluate(teacher, x_test, y_test, tcfg["eval_batch_size"])[1]
    _write_result(out, result, cfg)
    return result


def distill_main(argv=None) -> int:
    """CLI: distill --config FILE [--section.key value ...] (e.g. --mode scratch --train.epochs 1)."""
    return config_main(argv, DISTILL_DEFAULTS, distill, __doc__, hide=("losses", "copied"))


def main(argv=None) -> int:
    """`python -m transmamba.train_vision {train-teacher,distill} ...`: the same entry points as
    `transmamba train-teacher|distill` (cli.py), kept because earlier recorded experiment commands use it."""
    parser = argparse.ArgumentParser(prog="transmamba.train_vision")
    parser.add_argument("command", choices=["train-teacher", "distill"])
    args, rest = parser.parse_known_args(argv)
    return train_teacher_main(rest) if args.command == "train-teacher" else distill_main(rest)


if __name__ == "__main__":
    sys.exit(main())
