"""2x2 grids of real Fashion-MNIST images (56x56) with captions naming the items and their cells.

Every grid is four REAL 28x28 Fashion-MNIST images pasted side by side (nothing is drawn or
generated): cell k in CELLS order holds image idx[k],

    grid[0:28, 0:28] = top left, [0:28, 28:56] = top right, [28:56, 0:28] = bottom left, [28:56, 28:56] = bottom right.

Cell labels are the images' classes. A caption names some or all cells in reading order,

    "a sneaker top left and a bag bottom right"
    "a coat top left, a dress top right, a bag bottom left and a sandal bottom right"

Everything is a deterministic function of the labels and the seed.
"""

from __future__ import annotations

import numpy as np

from transmamba.data.vqa_questions import CLASS_NAMES

CELLS = ("top left", "top right", "bottom left", "bottom right")
CELL = 28  # side of one Fashion-MNIST image


def article(name: str) -> str:
    """'an' before a vowel, else 'a'."""
    return "an" if name[0] in "aeiou" else "a"


def item_phrase(c: int) -> str:
    """'a sneaker', 'an ankle boot', 'a pair of trousers'."""
    return f"{article(CLASS_NAMES[c])} {CLASS_NAMES[c]}"


def join_phrases(parts: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if not parts:
        raise ValueError("a caption needs at least one named cell")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def grid_caption(cell_labels, named=None) -> str:
    """Caption of one grid: the named cells (indices into CELLS, default all four) in reading order."""
    cells = range(4) if named is None else sorted(int(k) for k in named)
    return join_phrases([f"{item_phrase(int(cell_labels[k]))} {CELLS[k]}" for k in cells])


def class_pools(labels: np.ndarray, n_classes: int = 10) -> list[np.ndarray]:
    """Indices of the images of each class."""
    labels = np.asarray(labels)
    pools = [np.flatnonzero(labels == c) for c in range(n_classes)]
    empty = [c for c, p in enumerate(pools) if len(p) == 0]
    if empty:
        raise ValueError(f"no image of class(es) {empty} to build grids from")
    return pools


def pick_images(cell_labels: np.ndarray, image_labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For cell labels "n 4", one random image index of each cell's class "n 4"."""
    pools = class_pools(image_labels)
    out = np.empty(cell_labels.shape, dtype=np.int64)
    for c, pool in enumerate(pools):
        sel = cell_labels == c
        out[sel] = pool[rng.integers(0, len(pool), int(sel.sum()))]
    return out


def compose_grids(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """uint8 grids "n 56 56" from images "N 28 28" and image indices "n 4" (CELLS order)."""
    if images.ndim != 3 or images.shape[1:] != (CELL, CELL):
        raise ValueError(f"images must have shape (N, {CELL}, {CELL}), got {images.shape}")
    if idx.ndim != 2 or idx.shape[1] != 4:
        raise ValueError(f"idx must have shape (n, 4), got {idx.shape}")
    cells = images[idx]  # "n 4 28 28"
    top = np.concatenate([cells[:, 0], cells[:, 1]], axis=2)
    bottom = np.concatenate([cells[:, 2], cells[:, 3]], axis=2)
    return np.ascontiguousarray(np.concatenate([top, bottom], axis=1))


def make_caption_grids(images: np.ndarray, labels: np.ndarray, n: int, *, seed: int = 0,
                       n_named: int = 4, unique: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(grids uint8 "n 56 56", cell labels int64 "n 4", captions) of n grids of real images.

    Cell classes are uniform and independent; each caption names n_named cells (all four when
    n_named == 4, else a random subset of that size). unique=True redraws a grid whose caption
    an earlier grid already has (so a retrieval gallery has one right answer per query)."""
    if not 1 <= n_named <= 4:
        raise ValueError(f"n_named must be in [1, 4], got {n_named}")
    rng = np.random.default_rng(seed)
    cell_labels = np.empty((n, 4), dtype=np.int64)
    captions: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        for _ in range(1000):
            lab = rng.integers(0, len(CLASS_NAMES), 4)
            named = None if n_named == 4 else np.sort(rng.choice(4, n_named, replace=False))
            cap = grid_caption(lab, named)
            if not unique or cap not in seen:
                break
        else:
            raise ValueError(f"cannot draw {n} grids with distinct captions naming {n_named} cells")
        seen.add(cap)
        cell_labels[i] = lab
        captions.append(cap)
    idx = pick_images(cell_labels, labels, rng)
    return compose_grids(images, idx), cell_labels, captions
