"""Moving Fashion-MNIST: short clips of ONE real Fashion-MNIST image sliding over a larger canvas.

This is synthetic motion of real images, not real video: each clip pastes one (real) 28x28
Fashion-MNIST item onto a black `canvas` x `canvas` frame and moves it along a straight line in
one of 8 compass directions, bouncing off the borders, one `speed`-pixel step per frame. The
path (start corner and direction) is a deterministic function of the clip index and the seed, so
the same arguments always give the same clips.

Labels: label_mode="class" -> the item's class (10 classes); "class_direction" -> class * 8 +
direction (80 classes: a frame-wise model cannot tell the direction, a temporal one can).

Clips are uint8 "n t canvas canvas"; `to_tensors` in `fashion_mnist` turns them into
float "n t 1 canvas canvas".
"""

from __future__ import annotations

import numpy as np

# (dy, dx) per direction: E, NE, N, NW, W, SW, S, SE
DIRECTIONS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _bounce(pos: int, step: int, lo: int, hi: int) -> tuple[int, int]:
    """Advance pos by step inside [lo, hi], reflecting at the borders; returns (pos, step)."""
    p = pos + step
    if p < lo:
        p, step = 2 * lo - p, -step
    elif p > hi:
        p, step = 2 * hi - p, -step
    return min(max(p, lo), hi), step


def item_path(frames: int, canvas: int, item: int, direction: int, start: tuple[int, int],
              speed: int = 2) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the item in each frame: a straight line at `speed` pixels per frame
    along DIRECTIONS[direction], reflected at the canvas borders (pos in [0, canvas - item])."""
    if not 0 <= direction < len(DIRECTIONS):
        raise ValueError(f"direction must be in [0, {len(DIRECTIONS)}), got {direction}")
    hi = canvas - item
    if hi < 0:
        raise ValueError(f"canvas={canvas} must be at least the item size {item}")
    (y, x), (dy, dx) = start, DIRECTIONS[direction]
    dy, dx = dy * speed, dx * speed
    path = [(y, x)]
    for _ in range(frames - 1):
        y, dy = _bounce(y, dy, 0, hi)
        x, dx = _bounce(x, dx, 0, hi)
        path.append((y, x))
    return path


def make_moving_clips(images: np.ndarray, labels: np.ndarray, n_clips: int | None = None, *,
                      frames: int = 4, canvas: int = 32, speed: int = 2,
                      label_mode: str = "class", seed: int = 0, bounce_free: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic-motion clips of real images: (clips uint8 "n t canvas canvas", labels int64 "n").

    Clip i uses image i % len(images); its direction is i % 8 and its start point is drawn from a
    generator seeded by `seed` (so the whole set is deterministic). bounce_free=True draws each
    start inside the range from which the whole path stays on the canvas without reflection
    (needs canvas - item >= speed * (frames - 1)), so the motion is one straight line.
    """
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, h, w), got {images.shape}")
    if label_mode not in ("class", "class_direction"):
        raise ValueError(f"label_mode must be 'class' or 'class_direction', got {label_mode!r}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    n_img, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    n = n_img if n_clips is None else int(n_clips)
    rng = np.random.default_rng(seed)
    hi = canvas - h
    if hi < 0:
        raise ValueError(f"canvas={canvas} must be at least the image size {h}")
    if bounce_free:
        travel = speed * (frames - 1)
        if travel > hi:
            raise ValueError(f"bounce_free needs canvas - item >= speed * (frames - 1): {hi} < {travel}")
        starts = np.zeros((n, 2), dtype=np.int64)
        for i in range(n):
            for a, step in enumerate(DIRECTIONS[i % len(DIRECTIONS)]):
                lo_s = travel if step < 0 else 0
                hi_s = hi - travel if step > 0 else hi
                starts[i, a] = rng.integers(lo_s, hi_s + 1)
    else:
        starts = rng.integers(0, hi + 1, size=(n, 2))
    clips = np.zeros((n, frames, canvas, canvas), dtype=np.uint8)
    out_labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        j, direction = i % n_img, i % len(DIRECTIONS)
        for t, (y, x) in enumerate(item_path(frames, canvas, h, direction,
                                             (int(starts[i, 0]), int(starts[i, 1])), speed)):
            clips[i, t, y:y + h, x:x + w] = images[j]
        c = int(labels[j])
        out_labels[i] = c if label_mode == "class" else c * len(DIRECTIONS) + direction
    return clips, out_labels


def num_classes(base_classes: int, label_mode: str) -> int:
    """10 for "class", 80 for "class_direction" (with 10 base classes)."""
    return base_classes if label_mode == "class" else base_classes * len(DIRECTIONS)
