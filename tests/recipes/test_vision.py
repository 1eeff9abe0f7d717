"""Vision data and the train-teacher / distill entry points (tiny end-to-end runs on sklearn digits)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny_fixtures import write_idx
from transmamba.data import fashion_mnist as fm
from transmamba.data.moving_fmnist import DIRECTIONS, item_path, make_moving_clips
from transmamba.training.metrics import read_metrics
from transmamba.recipes.vision import (DISTILL_DEFAULTS, ClassifyStep, classification_run, distill_main, load_data,
                                      teacher_initialised_params, train_teacher_main)
from transmamba.training.optim import lr_at, param_groups


# ---------------------------------------------------------------------------------------------
# data


def _write_fake_fmnist(root, n=12, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, (img_f, lab_f) in fm.FILES.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / img_f, images)
        write_idx(root / lab_f, labels, compress=False)  # plain IDX is read too
        data[split] = (images, labels)
    return data


def test_idx_roundtrip(tmp_path):
    data = _write_fake_fmnist(tmp_path / "fm")
    images, labels = fm.load_fashion_mnist("test", root=tmp_path / "fm")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, data["test"][0]) and np.array_equal(labels, data["test"][1])


def test_missing_file_names_file_and_package(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fm.load_fashion_mnist("train", root=tmp_path / "nothing")
    assert "train-images-idx3-ubyte.gz" in str(e.value) and "dataset-fashion-mnist" in str(e.value)


def test_bad_idx_raises(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 20)
    with pytest.raises(ValueError, match="magic"):
        fm.read_idx_images(tmp_path / "x.gz")
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist("val", root=tmp_path)


def test_subset_is_stratified_and_deterministic():
    images, labels = np.zeros((100, 2, 2), np.uint8), np.repeat(np.arange(10), 10)
    a, la = fm.subset(images, labels, 0.3, seed=1)
    b, lb = fm.subset(images, labels, 0.3, seed=1)
    assert len(a) == 30 and np.array_equal(la, lb)
    assert np.array_equal(np.bincount(la), np.full(10, 3))


def test_moving_clips_move_real_images_deterministically():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(5, 6, 6), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    clips, y = make_moving_clips(images, labels, 16, frames=5, canvas=12, speed=2, seed=3)
    clips2, y2 = make_moving_clips(images, labels, 16, frames=5, canvas=12, speed=2, seed=3)
    assert clips.shape == (16, 5, 12, 12) and np.array_equal(clips, clips2) and np.array_equal(y, y2)
    for i in range(16):
        # every frame holds the (real) image exactly once, pixels untouched
        for t in range(5):
            ys, xs = np.nonzero(clips[i, t])
            y0, x0 = ys.min(), xs.min()
            assert np.array_equal(clips[i, t, y0:y0 + 6, x0:x0 + 6], images[i % 5])
        assert y[i] == labels[i % 5]
    _, yd = make_moving_clips(images, labels, 16, frames=2, canvas=12, label_mode="class_direction")
    assert yd.tolist() == [labels[i % 5] * 8 + i % 8 for i in range(16)]
    path = item_path(4, 10, 6, 0, (0, 3), speed=1)  # east, bounces at x = 4
    assert path == [(0, 3), (0, 4), (0, 3), (0, 2)]
    assert len(DIRECTIONS) == 8


def test_load_data_digits_and_video():
    d = load_data({**DISTILL_DEFAULTS["data"], "dataset": "digits", "fraction": 0.5})
    x, y = d["train"]
    assert x.shape[1:] == (1, 8, 8) and d["num_classes"] == 10 and not d["video"]
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    v = load_data({**DISTILL_DEFAULTS["data"], "dataset": "moving_digits",
                   "video": {"frames": 3, "canvas": 12, "speed": 1, "label_mode": "class",
                             "train_clips": 40, "test_clips": 10}})
    assert v["train"][0].shape == (40, 3, 1, 12, 12) and v["video"] and v["frames"] == 3


# ---------------------------------------------------------------------------------------------
# training


def test_lr_schedule_and_param_groups():
    kw = dict(total_steps=100, lr=1.0, min_lr=0.0, warmup_steps=10)  # the vision recipes decay to 0
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(100, **kw) == pytest.approx(0.0)
    from transmamba.models.vision import build_student

    m = build_student(dict(arch="vim", img_size=8, patch_size=2, d_model=8, depth=1))
    decay, no_decay = param_groups([m], 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert "blocks.0.mixer.in_proj.weight" in [names[id(p)] for p in decay["params"]]
    nd = [names[id(p)] for p in no_decay["params"]]
    assert {"pos_embed", "cls_token", "blocks.0.mixer.A_log", "blocks.0.mixer.D"} <= set(nd)


def test_lr_scale_groups_and_frozen_copied_layers(tmp_path):
    """init.lr_scale: the teacher-initialised params get their own groups (decay split kept), and
    the loop scales their lr: with scale 0 they do not move while the rest trains."""
    from transmamba.models.vision import build_student

    torch.manual_seed(0)
    m = build_student(dict(arch="vim", img_size=8, patch_size=2, d_model=8, depth=2, num_classes=3))
    names = {id(p): n for n, p in m.named_parameters()}
    copied = teacher_initialised_params(m, 1)
    cn = {names[id(p)] for p in copied}
    assert {"patch_embed.weight", "pos_embed", "cls_token", "head.weight", "norm_f.weight",
            "blocks.0.mixer.in_proj.weight", "blocks.0.mixer.A_log"} <= cn
    assert not any(n.startswith("blocks.1.") for n in cn)
    groups = param_groups([m], 0.1, {id(p): 0.0 for p in copied})
    scaled = [g for g in groups if g["lr_scale"] == 0.0]
    assert {id(p) for g in scaled for p in g["params"]} == {id(p) for p in copied}
    assert {g["weight_decay"] for g in scaled} == {0.0, 0.1}
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))

    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    from transmamba.recipes.vision import TRAIN_DEFAULTS

    tcfg = {**TRAIN_DEFAULTS, "epochs": 1, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.05, "warmup_steps": 1,
            "log_every": 100, "progress": False, "save": False}
    data = {"train": (x, y), "test": (x, y), "video": False}
    classification_run("frozen", ClassifyStep(m), data, {"train": tcfg, "out_dir": str(tmp_path)},
                       lr_scale={id(p): 0.0 for p in copied})
    for n, p in m.named_parameters():
        if n in cn:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(m.blocks[1].mixer.in_proj.weight, before["blocks.1.mixer.in_proj.weight"])


TEACHER_ARGS = ["--data.dataset", "digits", "--vit.patch_size", "2", "--vit.d_model", "16",
                "--vit.depth", "2", "--vit.num_heads", "2", "--vit.d_ff", "32", "--train.epochs", "1",
                "--train.batch_size", "64", "--train.max_steps", "6", "--train.progress", "false",
                "--train.warmup_steps", "2", "--train.lr", "3e-3", "--train.threads", "1"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision") / "teacher"
    assert train_teacher_main(TEACHER_ARGS + ["--out_dir", str(out)]) == 0
    return out


def _student_args(out, teacher, arch="vim", extra=()):
    return ["--data.dataset", "digits", "--student.arch", arch, "--student.patch_size", "2",
            "--student.d_model", "12", "--student.depth", "2", "--student.d_state", "4",
            "--teacher", str(teacher), "--out_dir", str(out), "--train.max_steps", "6",
            "--train.batch_size", "32", "--train.progress", "false", "--train.warmup_steps", "2",
            "--train.log_every", "1", "--train.lr", "3e-3", "--init.layers", "1",
            "--train.threads", "1", *extra]


def test_train_teacher_writes_checkpoint(teacher_dir):
    cfg = json.loads((teacher_dir / "config.json").read_text())
    assert cfg["format"] == "transmamba-vit" and cfg["vit"]["d_model"] == 16
    assert (teacher_dir / "model.safetensors").is_file()
    res = json.loads((teacher_dir / "result.json").read_text())
    assert res["steps"] == 6 and 0 <= res["test_top1"] <= 1


@pytest.mark.parametrize("arch", ["vim", "vmamba"])
def test_distill_end_to_end(teacher_dir, tmp_path, arch):
    out = tmp_path / arch
    assert distill_main(_student_args(out, teacher_dir, arch, ["--distill.kd_weight", "0.5"])) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["mode"] == "transmamba" and res["steps"] == 6 and res["init_layers"] == 1
    rows = read_metrics(out / "metrics.csv")
    train_rows = [r for r in rows if r["train_loss"] is not None]
    assert len(train_rows) == 6
    for r in train_rows:
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["distill_loss"])
        assert np.isfinite(r["kd_loss"]) and -1 <= r["mean_cos"] <= 1
    assert np.isfinite(res["test_loss"]) and 0 <= res["test_top1"] <= 1
    assert res["train_loss_last"] < res["train_loss_first"] * 1.5  # finite and not blowing up
    # the checkpoint reloads to the same model
    from transmamba.models.vision import load_student
    from transmamba.evaluation.classification import evaluate_classifier as evaluate

    again = load_student(out)
    d = load_data({**DISTILL_DEFAULTS["data"], "dataset": "digits"})
    assert evaluate(again, *d["test"])[1] == pytest.approx(res["test_top1"])
    assert not list(out.glob("*.tmp-*"))


def test_distill_with_block_calibration(teacher_dir, tmp_path):
    """init.calibrate / calibrate_mlp / calibrate_head / lr_scale run through the CLI and are
    recorded in result.json's `copied` list."""
    out = tmp_path / "cal"
    extra = ["--init.mixer", "mean_qk", "--student.bias", "true", "--init.calibrate", "true",
             "--init.calibrate_mlp", "true", "--init.calibrate_head", "true", "--init.lr_scale", "0.5"]
    assert distill_main(_student_args(out, teacher_dir, "plainmamba", extra)) == 0
    res = json.loads((out / "result.json").read_text())
    fits = [c for c in res["copied"] if "out_proj fit" in c]
    assert len(fits) == 1 and "MLP neurons hosted" in fits[0]  # init.layers 1
    assert res["copied"][-1].startswith("head fit to the teacher's logits")
    assert res["steps"] == 6 and np.isfinite(res["test_loss"])


def test_scratch_mode_needs_no_teacher(tmp_path):
    out = tmp_path / "scratch"
    args = _student_args(out, tmp_path / "no-teacher-here", "plainmamba", ["--mode", "scratch"])
    assert distill_main(args) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["mode"] == "scratch" and res["init_top1"] is None and res["copied"] == []


def test_distill_loss_decreases_on_a_fixed_batch(teacher_dir):
    """A few steps of the full objective on one batch lower it (the pieces are wired to the graph)."""
    from transmamba.recipes.vision import build_distill_run, load_config

    cfg = load_config(None, _student_args("unused", teacher_dir), defaults=DISTILL_DEFAULTS)
    data = load_data(cfg["data"])
    torch.manual_seed(0)
    student, teacher, dloss, _ = build_distill_run(cfg, data)
    x, y = data["train"][0][:32], data["train"][1][:32]
    opt = torch.optim.Adam(list(student.parameters()) + list(dloss.parameters()), lr=3e-3)
    perms = student.blocks[0].mixer.perms
    losses = []
    for _ in range(5):
        logits, feats = student(x, return_directions=True)
        with torch.no_grad():
            _, hidden, _ = teacher(x, return_hidden=True)
        dl, _ = dloss(feats, [student.align_teacher_tokens(h) for h in hidden], perms)
        loss = 0.5 * torch.nn.functional.cross_entropy(logits, y) + 0.5 * dl
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_unknown_config_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        distill_main(["--data.dataset", "digits", "--train.epohcs", "1"])


def test_shipped_configs_load():
    """Every configs/vision/*.yaml resolves against the defaults (no unknown keys, valid students)."""
    from pathlib import Path

    from transmamba.config import load_config
    from transmamba.models.vision import StudentConfig
    from transmamba.recipes.vision import TEACHER_DEFAULTS

    root = Path(__file__).resolve().parents[2] / "configs" / "vision"
    files = sorted(p for p in root.glob("*.yaml") if not p.name.startswith("_"))
    assert files
    for f in files:
        teacher = f.name.startswith("teacher")
        cfg = load_config(f, None, defaults=TEACHER_DEFAULTS if teacher else DISTILL_DEFAULTS)
        if not teacher:
            s = {k: v for k, v in cfg["student"].items() if v is not None}
            StudentConfig(**s, img_size=4 * s["patch_size"])  # validates arch/norm
            assert cfg["mode"] in ("transmamba", "scratch")


def test_video_direction_labels_distill_from_a_class_only_teacher(tmp_path):
    """class x direction labels (80) from a 10-class frame-wise teacher: the head is not copied and
    the teacher is scored on the class part of the label."""
    video = ["--data.dataset", "moving_digits", "--data.video.frames", "2", "--data.video.canvas", "12",
             "--data.video.train_clips", "64", "--data.video.test_clips", "32", "--train.threads", "1",
             "--train.progress", "false", "--train.warmup_steps", "1", "--train.batch_size", "32"]
    t_out = tmp_path / "teacher"
    assert train_teacher_main(video + ["--vit.patch_size", "4", "--vit.d_model", "16", "--vit.depth", "1",
                                       "--vit.num_heads", "2", "--vit.d_ff", "32", "--train.max_steps", "2",
                                       "--out_dir", str(t_out)]) == 0
    out = tmp_path / "student"
    assert distill_main(video + ["--data.video.label_mode", "class_direction", "--student.arch", "videomamba",
                                 "--student.patch_size", "4", "--student.d_model", "12", "--student.depth", "1",
                                 "--student.d_state", "4", "--teacher", str(t_out), "--out_dir", str(out),
                                 "--train.max_steps", "2", "--init.layers", "1"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert "head" not in res["copied"] and res["teacher_top1_on"] == "class"
    assert 0 <= res["teacher_top1"] <= 1


def test_distill_bf16_through_the_engine(teacher_dir, tmp_path):
    """train.amp bf16: the student and the distillation run under bf16 autocast (fp32 weights)."""
    out = tmp_path / "bf16"
    assert distill_main(_student_args(out, teacher_dir, "vim", ["--train.amp", "bf16",
                                                                 "--distill.kd_weight", "0.5"])) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["amp"] == "bf16" and res["steps"] == 6 and np.isfinite(res["test_loss"])
    rows = [r for r in read_metrics(out / "metrics.csv") if r["train_loss"] is not None]
    assert len(rows) == 6 and all(np.isfinite(r["distill_loss"]) for r in rows)


@pytest.mark.parametrize("key,value", [("--train.epochs", "0"), ("--train.lr", "nan"), ("--data.fraction", "1.5"),
                                       ("--student.depth", "-1"), ("--mode", "teacher")])
def test_bad_vision_config_is_refused_before_any_work(tmp_path, key, value):
    with pytest.raises(ValueError, match=key[2:].replace(".", "[.]") + ".*must be"):
        distill_main(["--data.dataset", "digits", "--out_dir", str(tmp_path / "x"), key, value])
    assert not (tmp_path / "x").exists()


def test_logit_kd_against_a_windowed_teacher_is_refused():
    with pytest.raises(ValueError, match="teacher_window changes the teacher's logits"):
        ClassifyStep(torch.nn.Identity(), kd_weight=0.5, teacher_window=2)


def test_epoch_batches_keep_groups_together_and_group_1_is_the_plain_shuffle():
    from transmamba.recipes.vision import epoch_batches

    plain = epoch_batches(10, 4, seed=3)(0)
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(10, generator=gen)
    assert [next(plain).tolist() for _ in range(3)] == [order[:4].tolist(), order[4:8].tolist(), order[8:].tolist()]
    stream = epoch_batches(12, 4, seed=0, group=2)
    batches = [next(it).tolist() for it in [stream(0)] for _ in range(6)]  # two epochs of 3 batches
    for b in batches:
        assert len(b) == 4 and all(b[i] % 2 == 0 and b[i + 1] == b[i] + 1 for i in (0, 2))  # twins side by side
    assert sorted(sum(batches[:3], [])) == list(range(12)) == sorted(sum(batches[3:], []))
    assert next(stream(4)).tolist() == batches[4]  # resuming skips the batches before the step
    with pytest.raises(ValueError, match="multiples of group"):
        epoch_batches(12, 5, seed=0, group=2)
