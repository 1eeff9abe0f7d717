"""Captions for moving Fashion-MNIST clips: the item and its motion.

    "a sneaker moving up and to the right"

Clips come from `moving_fmnist.make_moving_clips(..., bounce_free=True)`: one REAL Fashion-MNIST
image sliding in a straight line (synthetic motion of a real image), never reflected, so the
caption's direction holds for every frame. Clip i's direction is i % 8; its class is the image's.
"""

from __future__ import annotations

import numpy as np

from transmamba.data.fmnist_grids import item_phrase
from transmamba.data.moving_fmnist import DIRECTIONS, make_moving_clips

# in DIRECTIONS order: E, NE, N, NW, W, SW, S, SE
DIRECTION_NAMES = ("to the right", "up and to the right", "up", "up and to the left", "to the left",
                   "down and to the left", "down", "down and to the right")


def clip_caption(cls: int, direction: int) -> str:
    """'a sneaker moving up and to the right'."""
    if not 0 <= direction < len(DIRECTIONS):
        raise ValueError(f"direction must be in [0, {len(DIRECTIONS)}), got {direction}")
    return f"{item_phrase(int(cls))} moving {DIRECTION_NAMES[direction]}"


def all_clip_captions(n_classes: int = 10) -> list[str]:
    """The 80 captions; caption id = class * 8 + direction."""
    return [clip_caption(c, d) for c in range(n_classes) for d in range(len(DIRECTIONS))]


def caption_facets(cap: np.ndarray) -> dict[str, np.ndarray]:
    """Caption id "n" -> {"item": class "n", "direction": direction "n"} (id = class * 8 + direction)."""
    cap = np.asarray(cap)
    n_dir = len(DIRECTIONS)
    return {"item": cap // n_dir, "direction": cap % n_dir}


def make_captioned_clips(images: np.ndarray, labels: np.ndarray, n: int, *, frames: int = 4, canvas: int = 35,
                         speed: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clips uint8 "n t canvas canvas", caption ids int64 "n" = class * 8 + direction), bounce-free
    straight-line motion; clip i uses image (a seeded permutation of the images)[i % N]."""
    order = np.random.default_rng(seed).permutation(len(images))
    clips, cap = make_moving_clips(images[order], np.asarray(labels)[order], n, frames=frames, canvas=canvas,
                                   speed=speed, label_mode="class_direction", seed=seed, bounce_free=True)
    return clips, cap


def make_caption_galleries(images: np.ndarray, labels: np.ndarray, n_galleries: int, *, frames: int = 4,
                           canvas: int = 35, speed: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n_galleries x 80 clips, each block of 80 holding every caption once (clip i: caption i % 80,
    a random real image of class (i // 8) % 10); for retrieval test galleries."""
    pools = [np.flatnonzero(np.asarray(labels) == c) for c in range(10)]
    rng = np.random.default_rng(seed)
    n = 80 * n_galleries
    pick = np.array([pools[(i // 8) % 10][rng.integers(0, len(pools[(i // 8) % 10]))] for i in range(n)])
    return make_moving_clips(images[pick], np.asarray(labels)[pick], n, frames=frames, canvas=canvas, speed=speed,
                             label_mode="class_direction", seed=seed, bounce_free=True)
