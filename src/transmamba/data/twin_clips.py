"""Two-item moving Fashion-MNIST clips in *twin* pairs, captioned with both items and their motions.

    "a bag moving up and a sneaker moving to the left"

Each clip holds two REAL Fashion-MNIST images (2x2 average-pooled to 14x14, `shrink`), each sliding
in its own straight line (synthetic motion of real images, never reflected): one inside the left
half of the canvas, one inside the right half. The two items have different classes and different
directions. The caption names the items in class order, so it never tells which side an item is on.

Clips come in twins: clip 2k+1 is clip 2k with the two directions exchanged (same two images on
the same sides). A twin has the same items and the same set of directions; only which item moves
which way differs. To tell twins apart, a model has to bind each motion to its item, and the text
has to say which binding it asks for. A single-item clip task (`clip_captions`) never asks this.

spec "n 4" int64 per clip: (class_lo, direction_lo, class_hi, direction_hi), class_lo < class_hi.
Everything is a deterministic function of the images, labels and seed.
"""

from __future__ import annotations

import numpy as np

from transmamba.data.clip_captions import DIRECTION_NAMES
from transmamba.data.fmnist_grids import item_phrase
from transmamba.data.moving_fmnist import DIRECTIONS
from transmamba.data.vqa_questions import CLASS_NAMES

N_DIR = len(DIRECTIONS)


def shrink(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """uint8 "n h w" -> "n h/f w/f": the mean of each f x f block, rounded."""
    n, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image side {h}x{w} is not a multiple of factor {factor}")
    blocks = images.reshape(n, h // factor, factor, w // factor, factor).astype(np.float32)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def twin_caption(spec_row) -> str:
    """(class_lo, direction_lo, class_hi, direction_hi) -> 'a bag moving up and a sneaker moving to the left'."""
    c0, d0, c1, d1 = (int(v) for v in spec_row)
    if not c0 < c1:
        raise ValueError(f"spec must list the lower class first, got classes {c0}, {c1}")
    return f"{item_phrase(c0)} moving {DIRECTION_NAMES[d0]} and {item_phrase(c1)} moving {DIRECTION_NAMES[d1]}"


def twin_facets(spec: np.ndarray) -> dict[str, np.ndarray]:
    """spec "n 4" -> {"items": the class pair "n", "directions": the unordered direction pair "n"}.
    Twins share both facets; only the binding (the full caption) tells them apart."""
    spec = np.asarray(spec)
    lo, hi = np.minimum(spec[:, 1], spec[:, 3]), np.maximum(spec[:, 1], spec[:, 3])
    return {"items": spec[:, 0] * len(CLASS_NAMES) + spec[:, 2], "directions": lo * N_DIR + hi}


def _start(rng: np.random.Generator, direction: int, hi: tuple[int, int], travel: int) -> tuple[int, int]:
    """A start (y, x), y in [0, hi[0]] and x in [0, hi[1]], from which `travel` pixels along
    `direction` stay inside those ranges."""
    out = []
    for step, h in zip(DIRECTIONS[direction], hi):
        lo_s = travel if step < 0 else 0
        hi_s = h - travel if step > 0 else h
        out.append(int(rng.integers(lo_s, hi_s + 1)))
    return out[0], out[1]


def render_twin_pair(left: np.ndarray, right: np.ndarray, d_left: int, d_right: int, rng: np.random.Generator,
                     *, frames: int, canvas: int, speed: int) -> np.ndarray:
    """uint8 "2 t canvas canvas": the clip (left item moves d_left, right item d_right) and its twin
    (directions exchanged). Each item stays inside its half (columns [0, canvas/2) or [canvas/2, canvas))."""
    side = left.shape[-1]
    half = canvas // 2
    hi_y, hi_x, travel = canvas - side, half - side, speed * (frames - 1)
    if travel > min(hi_x, hi_y):
        raise ValueError(f"a {side}px item moving {travel}px does not fit a half of a {canvas}px canvas; "
                         f"need canvas/2 - item >= speed * (frames - 1)")
    out = np.zeros((2, frames, canvas, canvas), dtype=np.uint8)
    for k, dirs in enumerate(((d_left, d_right), (d_right, d_left))):
        for img, d, x0 in ((left, dirs[0], 0), (right, dirs[1], half)):
            (y, x), (dy, dx) = _start(rng, d, (hi_y, hi_x), travel), DIRECTIONS[d]
            for t in range(frames):
                py, px = y + t * speed * dy, x0 + x + t * speed * dx
                out[k, t, py:py + side, px:px + side] = img
    return out


def make_twin_clips(images: np.ndarray, labels: np.ndarray, n_pairs: int, *, frames: int = 3, canvas: int = 42,
                    speed: int = 3, seed: int = 0, unique: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(clips uint8 "2n t canvas canvas", spec int64 "2n 4"); clips 2k and 2k+1 are twins.

    images: "N 14 14" (see `shrink`). Each pair draws two images of different classes, a random side
    for each and two different directions. unique=True redraws a pair until no earlier clip has its
    caption (for test galleries, where every text must have exactly one right clip)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, h, w), got {images.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("twin clips need images of at least two classes")
    rng = np.random.default_rng(seed)
    clips = np.zeros((2 * n_pairs, frames, canvas, canvas), dtype=np.uint8)
    spec = np.zeros((2 * n_pairs, 4), dtype=np.int64)
    seen: set[tuple[int, ...]] = set()
    for k in range(n_pairs):
        for _ in range(1000):
            i, j = rng.integers(0, len(images), 2)
            if labels[i] == labels[j]:
                continue
            d = rng.choice(N_DIR, 2, replace=False)
            lo_first = labels[i] < labels[j]  # image i is the caption's first item iff its class is lower
            rows = []
            for di, dj in ((d[0], d[1]), (d[1], d[0])):
                rows.append((labels[i], di, labels[j], dj) if lo_first else (labels[j], dj, labels[i], di))
            if not unique or not (set(map(tuple, rows)) & seen):
                break
        else:
            raise ValueError(f"could not draw {n_pairs} twin pairs with distinct captions")
        seen.update(map(tuple, rows))
        clips[2 * k:2 * k + 2] = render_twin_pair(images[i], images[j], int(d[0]), int(d[1]), rng,
                                                  frames=frames, canvas=canvas, speed=speed)
        spec[2 * k:2 * k + 2] = rows
    return clips, spec
