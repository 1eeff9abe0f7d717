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

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.config import check_config, load_config  # noqa: F401  (load_config: tests)
from transmamba.data.batching import epoch_batches, example_batches, load_data, steps_of  # noqa: F401
from transmamba.evaluation.classification import evaluate_classifier
from transmamba.recipes.scaffold import epoch_fit, recipe_main, run_result, seed_everything, seed_of, write_result
from transmamba.recipes.vision_student import (DATA_DEFAULTS, DISTILL_DEFAULTS, TRAIN_DEFAULTS,  # noqa: F401
                                               VISION_RULES, build_distill_run, teacher_initialised_params)

SEED = "train.seed"  # this recipe's seed key
TEACHER_DEFAULTS = {
    "out_dir": "runs/vision/teacher-fmnist",
    "device": "cpu",
    "data": copy.deepcopy(DATA_DEFAULTS),
    "vit": {"img_size": None, "patch_size": 4, "d_model": 128, "depth": 4, "num_heads": 4,
            "d_ff": 256, "qkv_bias": True, "norm_eps": 1e-6},
    "train": {**copy.deepcopy(TRAIN_DEFAULTS), "epochs": 3},
}
METRIC_FIELDS = ["epoch", "task_loss", "distill_loss", "kd_loss", "mean_cos", "test_loss", "test_top1"]


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
    x_te, y_te = data["test"]
    model = step_module.model

    def evaluate(_):
        loss, acc = evaluate_classifier(model, x_te, y_te, int(tcfg["eval_batch_size"]))
        return {"test_loss": loss, "test_top1": acc}

    def after_eval(step, ev):
        if save_fn is not None and tcfg.get("save", True):
            save_fn(ev["epoch"], step, ev["test_top1"])

    res = epoch_fit(name, step_module, data["train"], cfg, evaluate, recipe="vision", metric_fields=METRIC_FIELDS,
                    fingerprint={k: cfg[k] for k in ("student", "vit", "mode", "data") if k in cfg}, saved=saved,
                    after_eval=after_eval, lr_scale=lr_scale, fill=float(data.get("fill", 0.0)), video=data["video"])
    ev = res["last_eval"]
    return {**run_result(res), "test_loss": ev.get("test_loss"), "test_top1": ev.get("test_top1"),
            "img_per_s": res["img_per_s"], "processes": res["processes"], "amp": res["amp"],
            "amp_reason": res["amp_reason"]}


# ---------------------------------------------------------------------------------------------
# train-teacher


def train_teacher(cfg: dict) -> dict:
    """Train a ViT teacher on cfg["data"] (frame-wise on moving clips); save it to cfg["out_dir"]."""
    from transmamba.models.vit import ViT, ViTConfig, save_vit

    check_config(cfg, VISION_RULES)
    seed_everything(seed_of(cfg, SEED))
    data = load_data(cfg["data"])
    vit = {k: v for k, v in cfg["vit"].items() if v is not None}
    vit.setdefault("img_size", data["img_size"])
    model = ViT(ViTConfig(in_chans=1, num_classes=data["num_classes"], **vit))
    out = Path(cfg["out_dir"])

    def save_fn(epoch, step, acc):
        save_vit(model, out, {"train_config": cfg, "epoch": epoch, "step": step, "test_top1": acc})

    result = classification_run("teacher", ClassifyStep(model), data, cfg, save_fn=save_fn)
    write_result(out / "result.json", result, config=cfg, drop=("losses",))
    return result


def train_teacher_main(argv=None) -> int:
    """CLI: train-teacher [--config FILE] [--section.key value ...]."""
    return recipe_main(argv, TEACHER_DEFAULTS, lambda cfg, _: train_teacher(cfg), __doc__,
                       prog="transmamba train-teacher", hide=("losses",), status=True)


# ---------------------------------------------------------------------------------------------
# distill


def distill(cfg: dict) -> dict:
    """Run one `distill` config (see module docstring); returns the result dict."""
    check_config(cfg, VISION_RULES)
    tcfg = cfg["train"]
    seed_everything(seed_of(cfg, SEED))
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
    write_result(out / "result.json", result, config=cfg, drop=("losses",))
    return result


def distill_main(argv=None) -> int:
    """CLI: distill --config FILE [--section.key value ...] (e.g. --mode scratch --train.epochs 1)."""
    return recipe_main(argv, DISTILL_DEFAULTS, lambda cfg, _: distill(cfg), __doc__, prog="transmamba distill",
                       hide=("losses", "copied"), status=True)
