"""The Adapt vision student that `distill`, `train-vqa` and `train-retrieval` share: its config
defaults and rules, and `build_distill_run` (the student, subcloned and layer-initialised from the
ViT teacher and calibrated when the config says so, the frozen teacher, and the adaptive
multi-directional distillation loss). Not a recipe itself: the recipes import it, never each other.
"""

from __future__ import annotations

import copy

import torch

from transmamba.config import FRACTION, NONNEG_INT, POSITIVE, POSITIVE_INT, TRAIN_RULES, UNIT, Rule, one_of
from transmamba.training.engine import ENGINE_DEFAULTS

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
