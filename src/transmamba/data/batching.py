"""Training data for the example-based recipes: the image / clip splits and their epoch batches.

    load_data(dcfg)            {"train": (x, y), "test": (x, y), ...} of Fashion-MNIST / digits images
                               or moving clips of them (the `data:` section of a vision config)
    epoch_batches(n, b, seed)  start_step -> index batches, epoch after epoch of one seeded permutation
    example_batches(arrays, t) start_step -> tuples of those rows (with the shift/flip augmentation)
    steps_of(n, t)             (total optimizer steps, steps per epoch)

Shared by `train-teacher`, `distill`, `train-vqa` and `train-retrieval`; a resumed run draws the same
batches (and augmentations) as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch

from transmamba.data.augment import shift_flip
from transmamba.data.fashion_mnist import load_image_dataset, subset, to_tensors
from transmamba.data.moving_fmnist import make_moving_clips, num_classes


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
