"""Vision Adapt recipes: `train-teacher` (a ViT) and `distill` (a Mamba student), on the one engine.

    transmamba train-teacher [--config configs/vision/teacher-fmnist.yaml] [--key value ...]
    transmamba distill --config configs/vision/vim-fmnist.yaml [--key value ...]

`distill` modes (config `mode`):
    transmamba  load the teacher, subclone it into the student (init.subclone, init.layers = n),
                then train with  L = alpha L_task + (1 - alpha) L_dir + kd_weight L_kd
    scratch     the same student and recipe, no teacher: own init, L = L_task
Ablation switches: init.subclone, init.layers, distill.enabled, distill.adaptive, distill.form.

The recipe supplies the data (epochs of shuffled training examples, optional shift/flip
augmentation), the loss (`ClassifyStep`) and the evaluation (test loss and top-1 after every
epoch, `transmamba.evaluation.classification`); `transmamba.training.engine.fit` runs it. Each
run writes to out_dir: metrics.csv, model.safetensors + config.json after each epoch (atomic) and
result.json (final test top-1, timings, the resolved config).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transmamba.config import (FRACTION, NONNEG_INT, POSITIVE, POSITIVE_INT, TRAIN_RULES, UNIT, Rule, check_config,
                               dump_yaml, load_config, one_of)
from transmamba.data.augment import shift_flip
from transmamba.data.fashion_mnist import load_image_dataset, subset, to_tensors
from transmamba.data.moving_fmnist import make_moving_clips, num_classes
from transmamba.evaluation.classification import evaluate_classifier
from transmamba.io.files import save_json_atomic
from transmamba.training.engine import ENGINE_DEFAULTS, Run, fit, is_main_process

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
    **copy.deepcopy(ENGINE_DEFAULTS),
    "epochs": 2, "batch_size": 128, "eval_batch_size": 500, "lr": 1e-3, "min_lr": 0.0, "weight_decay": 0.05,
    "betas": [0.9, 0.999], "warmup_steps": 50, "grad_clip": 1.0, "seed": 0, "max_steps": None, "log_every": 20,
    "eval_every": None,  # None: after every epoch
    "ckpt_every": 0,  # the model itself is saved after every epoch; >= 1 adds resumable checkpoints
    "save": True,
    "augment": {"shift": 0, "flip": False},  # data.augment.shift_flip on each training batch (images only)
}
TEACHER_DEFAULTS = {
    "out_dir": "runs/vision/teacher-fmnist",
    "device": "cpu",
    "data": copy.deepcopy(DATA_DEFAULTS),
    "vit": {"img_size": None, "patch_size": 4, "d_model": 128, "depth": 4, "num_heads": 4,
            "d_ff": 256, "qkv_bias": True, "norm_eps": 1e-6},
    "train": {**copy.deepcopy(TRAIN_DEFAULTS), "epochs": 3},
}
DISTILL_DEFAULTS = {
    "name": None,
    "out_dir": "runs/vision/student",
    "device": "cpu",
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
                "kd_weight": 0.0, "temperature": 2.0, "calib_hidden": None, "eps": 0.05,
                "teacher_window": 0},
    "train": copy.deepcopy(TRAIN_DEFAULTS),
}
METRIC_FIELDS = ["epoch", "task_loss", "distill_loss", "kd_loss", "mean_cos", "test_loss", "test_top1"]
VISION_RULES: dict[str, Rule] = {
    **TRAIN_RULES,
    "train.eval_every": TRAIN_RULES["train.eval_every"] | Rule("null (every epoch)", lambda v: v is None),
    "train.eval_batch_size": POSITIVE_INT, "data.fraction": FRACTION, "data.calib_size": POSITIVE_INT,
    "mode": one_of("transmamba", "scratch"), "distill.alpha": UNIT, "distill.temperature": POSITIVE,
    "student.d_model": POSITIVE_INT, "student.depth": POSITIVE_INT, "student.d_state": POSITIVE_INT,
    "student.patch_size": POSITIVE_INT, "vit.d_model": POSITIVE_INT, "vit.depth": POSITIVE_INT,
    "vit.num_heads": POSITIVE_INT, "vit.patch_size": POSITIVE_INT, "vit.d_ff": POSITIVE_INT,
    "init.layers": NONNEG_INT | Rule("null", lambda v: v is None), "distill.teacher_window": NONNEG_INT,
}


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


def epoch_batches(n: int, batch_size: int, seed: int, group: int = 1):
    """start_step -> iterator of example-index batches "(b,)": epoch after epoch of
    torch.randperm(n / group) from one generator seeded with `seed`, each cut into
    ceil(n / batch_size) batches (the last one smaller); resuming at a step skips the batches before
    it. group > 1 keeps each run of `group` consecutive examples (e.g. twin clips) in one batch."""
    if n % group or batch_size % group:
        raise ValueError(f"n ({n}) and batch_size ({batch_size}) must be multiples of group ({group})")
    n_g, b_g = n // group, batch_size // group
    steps_per_epoch = math.ceil(n_g / b_g)
    within = torch.arange(group)

    def stream(start: int):
        gen = torch.Generator().manual_seed(int(seed))
        epoch = 0
        while True:
            order = torch.randperm(n_g, generator=gen)
            for i, s in enumerate(range(0, n_g, b_g)):
                if epoch * steps_per_epoch + i >= start:
                    yield (order[s:s + b_g, None] * group + within).flatten()
            epoch += 1

    return stream


def example_batches(arrays: tuple[torch.Tensor, ...], tcfg: dict, *, fill: float = 0.0, video: bool = False,
                    group: int = 1):
    """start_step -> iterator of global training batches `tuple(a[idx] for a in arrays)` over
    `epoch_batches` (`group`: see there); with train.augment, arrays[0] (images) is shifted/flipped with a generator
    seeded by (seed, step), so a resumed run draws the same augmentation."""
    aug = tcfg.get("augment") or {}
    shift, flip = int(aug.get("shift") or 0), bool(aug.get("flip"))
    if (shift or flip) and video:
        raise ValueError("train.augment (shift/flip) is for image datasets; clips would lose their motion labels")
    idx_stream = epoch_batches(len(arrays[0]), int(tcfg["batch_size"]), int(tcfg["seed"]), group)

    def stream(start: int):
        for step, idx in enumerate(idx_stream(start), start):
            out = [a[idx] for a in arrays]
            if shift or flip:
                gen = torch.Generator().manual_seed(int(tcfg["seed"]) * 1_000_003 + step + 1)
                out[0] = shift_flip(out[0], shift, flip, fill, gen)
            yield tuple(out)

    return stream


def steps_of(n_train: int, tcfg: dict) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch) for n_train examples."""
    per_epoch = math.ceil(n_train / int(tcfg["batch_size"]))
    total = per_epoch * int(tcfg["epochs"])
    if tcfg.get("max_steps"):
        total = min(total, int(tcfg["max_steps"]))
    return total, per_epoch


# ---------------------------------------------------------------------------------------------
# the loss


class ClassifyStep(nn.Module):
    """loss = alpha CE(model(x), y) + (1 - alpha) L_dir + kd_weight KL(teacher || model) / parts.

    L_dir (the adaptive multi-directional feature loss, `dloss`) and KL need the frozen teacher,
    kept outside the module's parameters (it is not trained, saved or synchronised)."""

    def __init__(self, model: nn.Module, *, teacher: nn.Module | None = None, dloss: nn.Module | None = None,
                 alpha: float = 1.0, kd_weight: float = 0.0, temperature: float = 2.0, teacher_window: int = 0):
        super().__init__()
        if teacher_window and kd_weight:
            raise ValueError("distill.teacher_window changes the teacher's logits too: logit KD (distill.kd_weight) "
                             "against a windowed teacher is refused; set one of them to 0")
        self.model, self.dloss = model, dloss
        self.__dict__["teacher"] = teacher  # not a submodule
        self.alpha, self.kd_weight, self.temperature = alpha, kd_weight, temperature
        self.teacher_window = int(teacher_window)

    def forward(self, batch, step: int):
        from transmamba.adapt.distill import kl_logit_loss, teacher_targets, total_loss

        x, y = batch
        if self.dloss is None and not self.kd_weight:
            task = F.cross_entropy(self.model(x), y)
            return task, {"task_loss": task}
        logits, feats = self.model(x, return_directions=self.dloss is not None)
        task = F.cross_entropy(logits.float(), y)
        parts = {"task_loss": task}
        t_logits, toks = teacher_targets(self.teacher, self.model, x, self.teacher_window)
        dl = kd = None
        if self.dloss is not None:
            dl, cos = self.dloss(feats, toks, self.model.blocks[0].mixer.perms)
            parts.update(distill_loss=dl, mean_cos=cos.mean())
        if self.kd_weight:
            kd = kl_logit_loss(logits.float(), t_logits.float(), self.temperature)
            parts["kd_loss"] = kd
        return total_loss(task, dl, self.alpha if dl is not None else 1.0, kd, self.kd_weight), parts


def classification_run(name: str, step_module: ClassifyStep, data: dict, cfg: dict, *, saved: nn.Module | None = None,
                       save_fn=None, lr_scale: dict | None = None) -> dict:
    """Train step_module.model on data["train"] through the engine, evaluating on data["test"]
    after every epoch (save_fn(epoch, step, top1) after each evaluation). Returns the result dict."""
    tcfg = cfg["train"]
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    total, per_epoch = steps_of(len(x_tr), tcfg)
    model = step_module.model
    tcfg = {**tcfg, "eval_every": per_epoch if tcfg.get("eval_every") is None else tcfg["eval_every"]}

    def evaluate(_):
        loss, acc = evaluate_classifier(model, x_te, y_te, int(tcfg["eval_batch_size"]))
        return {"test_loss": loss, "test_top1": acc}

    def after_eval(step, ev):
        ev["epoch"] = (step - 1) // per_epoch
        if save_fn is not None and tcfg.get("save", True):
            save_fn(ev["epoch"], step, ev["test_top1"])

    run = Run(name=name, step_module=step_module,
              batches=example_batches((x_tr, y_tr), tcfg, fill=float(data.get("fill", 0.0)), video=data["video"]),
              total_steps=total, tcfg=tcfg, out_dir=Path(cfg["out_dir"]), config=cfg, saved=saved, evaluate=evaluate,
              after_eval=after_eval, unit="images", unit_per_example=1, metric_fields=METRIC_FIELDS, lr_scale=lr_scale,
              fingerprint={k: cfg[k] for k in ("student", "vit", "mode", "data") if k in cfg},
              device=cfg.get("device", "cpu"))
    if run.tcfg.get("parallel", "ddp") != "ddp":  # before fit: nothing written yet
        raise ValueError("train.parallel fsdp is not supported by the vision recipe (its step module holds the teacher and heads outside the sharded blocks; untested): use train.parallel ddp")
    res = fit(run)
    losses = res["losses"]
    ev = res["last_eval"]
    return {"steps": res["step"], "test_loss": ev.get("test_loss"), "test_top1": ev.get("test_top1"),
            "train_loss_first": losses[0] if losses else None,
            "train_loss_last": float(np.mean(losses[-10:])) if losses else None, "elapsed_s": round(res["elapsed_s"], 2),
            "img_per_s": res["img_per_s"], "processes": res["processes"], "amp": res["amp"],
            "amp_reason": res["amp_reason"], "losses": losses}


def write_result(out_dir: Path, result: dict, cfg: dict) -> None:
    """result.json (without the per-step losses) with the resolved config, on rank 0."""
    if is_main_process():
        res = {k: v for k, v in result.items() if k != "losses"}
        save_json_atomic({**res, "config": cfg}, out_dir / "result.json")


def config_main(argv, defaults: dict, run, doc: str, hide=("losses",)) -> int:
    """A config-driven CLI: [--config FILE] [--section.key value ...]; -h prints `doc` and the
    defaults; runs `run(cfg)` and prints its result as JSON (without the keys in `hide`)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--config", default=None)
    args, overrides = p.parse_known_args(list(argv if argv is not None else sys.argv[1:]))
    if overrides and overrides[0] in ("-h", "--help"):
        print(doc + "\nDefaults:\n" + dump_yaml(defaults))
        return 0
    res = run(load_config(args.config, overrides, defaults=defaults))
    if is_main_process():
        print(json.dumps({k: v for k, v in res.items() if k not in hide}))
    return 0


# ---------------------------------------------------------------------------------------------
# train-teacher


def train_teacher(cfg: dict) -> dict:
    """Train a ViT teacher on cfg["data"] (frame-wise on moving clips); save it to cfg["out_dir"]."""
    from transmamba.models.vit import ViT, ViTConfig, save_vit

    check_config(cfg, VISION_RULES)
    tcfg = cfg["train"]
    torch.manual_seed(int(tcfg["seed"]))
    np.random.seed(int(tcfg["seed"]))
    data = load_data(cfg["data"])
    vit = {k: v for k, v in cfg["vit"].items() if v is not None}
    vit.setdefault("img_size", data["img_size"])
    model = ViT(ViTConfig(in_chans=1, num_classes=data["num_classes"], **vit))
    out = Path(cfg["out_dir"])

    def save_fn(epoch, step, acc):
        save_vit(model, out, {"train_config": cfg, "epoch": epoch, "step": step, "test_top1": acc})

    result = classification_run("teacher", ClassifyStep(model), data, cfg, save_fn=save_fn)
    write_result(out, result, cfg)
    return result


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
    from transmamba.models.vision import build_student
    from transmamba.models.vit import window_mask
    from transmamba.models.vit_weights import load_pretrained_vit

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
        if d["teacher_window"]:  # a window that does not tile the teacher's patch grid is refused here
            window_mask(teacher.cfg.grid, int(d["teacher_window"]), teacher.n_prefix)
    return student, teacher, dloss, report


def distill(cfg: dict) -> dict:
    """Run one `distill` config (see module docstring); returns the result dict."""
    check_config(cfg, VISION_RULES)
    tcfg = cfg["train"]
    torch.manual_seed(int(tcfg["seed"]))
    np.random.seed(int(tcfg["seed"]))
    data = load_data(cfg["data"])
    student, teacher, dloss, report = build_distill_run(cfg, data)
    out = Path(cfg["out_dir"])
    d = cfg["distill"]
    kd_w = float(d["kd_weight"]) if teacher is not None and d["enabled"] else 0.0
    step = ClassifyStep(student, teacher=teacher, dloss=dloss, alpha=float(d["alpha"]) if dloss is not None else 1.0,
                        kd_weight=kd_w, temperature=float(d["temperature"]), teacher_window=int(d["teacher_window"]))

    def save_fn(epoch, at_step, acc):
        from transmamba.models.vision import save_student

        save_student(student, out, {"run_config": cfg, "epoch": epoch, "step": at_step, "test_top1": acc})

    init_acc = evaluate_classifier(student, *data["test"], tcfg["eval_batch_size"])[1] if report["copied"] else None
    saved = step if dloss is not None else student
    result = classification_run(cfg.get("name") or student.cfg.arch, step, data, cfg, saved=saved, save_fn=save_fn,
                                lr_scale=report.get("lr_scale"))
    result.update(init_top1=init_acc, init_layers=report["init_layers"], copied=report["copied"],
                  params=sum(p.numel() for p in student.parameters()), mode=cfg["mode"])
    if teacher is not None:  # a class-only teacher of class x direction labels is scored on the class
        x_test, y_test = data["test"]
        per_class = data["num_classes"] // teacher.cfg.num_classes
        if per_class > 1:
            y_test = torch.div(y_test, per_class, rounding_mode="floor")
            result["teacher_top1_on"] = "class"
        result["teacher_top1"] = evaluate_classifier(teacher, x_test, y_test, tcfg["eval_batch_size"])[1]
    write_result(out, result, cfg)
    return result


def distill_main(argv=None) -> int:
    """CLI: distill --config FILE [--section.key value ...] (e.g. --mode scratch --train.epochs 1)."""
    return config_main(argv, DISTILL_DEFAULTS, distill, __doc__, hide=("losses", "copied"))
