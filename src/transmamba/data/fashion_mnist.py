"""Fashion-MNIST from local IDX files, and sklearn's 8x8 digits for fast end-to-end tests.

Fashion-MNIST (Xiao et al. 2017: 60k train / 10k test 28x28 grey images, 10 clothing classes) is
read from Debian's `dataset-fashion-mnist` package, which installs the four gzipped IDX files in
/usr/share/datasets/fashion-mnist/ (`apt-get install dataset-fashion-mnist`). Nothing is downloaded.

IDX layout: big-endian int32 magic (2051 images, 2049 labels), int32 sizes, then uint8 data;
images "n 28 28" start at byte 16, labels "n" at byte 8.

Images are returned as float tensors "n 1 h w" scaled to [0, 1] and normalised with the
training set's mean/std by `to_tensor_dataset` when asked.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install the Debian package with "
            f"`apt-get install {APT_PACKAGE}` (it puts the IDX files in {DEFAULT_ROOT}), or pass "
            f"root=/dir/with/the/idx/files (or set TRANSMAMBA_FMNIST_ROOT).")
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 images "n rows cols" from an IDX3 file (gzipped or not): data at offset 16."""
    b = _read_bytes(Path(path))
    if len(b) < 16:
        raise ValueError(f"{path} is too short to be an IDX image file ({len(b)} bytes)")
    magic, n, rows, cols = struct.unpack(">iiii", b[:16])
    if magic != IMAGE_MAGIC:
        raise ValueError(f"{path} has magic {magic}, expected {IMAGE_MAGIC} for IDX images")
    data = np.frombuffer(b, np.uint8, offset=16)
    if data.size != n * rows * cols:
        raise ValueError(f"{path} holds {data.size} pixels, header says {n}x{rows}x{cols}")
    return data.reshape(n, rows, cols)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """uint8 labels "n" from an IDX1 file (gzipped or not): data at offset 8."""
    b = _read_bytes(Path(path))
    if len(b) < 8:
        raise ValueError(f"{path} is too short to be an IDX label file ({len(b)} bytes)")
    magic, n = struct.unpack(">ii", b[:8])
    if magic != LABEL_MAGIC:
        raise ValueError(f"{path} has magic {magic}, expected {LABEL_MAGIC} for IDX labels")
    data = np.frombuffer(b, np.uint8, offset=8)
    if data.size != n:
        raise ValueError(f"{path} holds {data.size} labels, header says {n}")
    return data


def fmnist_root(root: str | os.PathLike | None = None) -> Path:
    """root, else $TRANSMAMBA_FMNIST_ROOT, else the Debian package's directory."""
    return Path(root or os.environ.get("TRANSMAMBA_FMNIST_ROOT", DEFAULT_ROOT))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 "n 28 28", labels uint8 "n") of one split ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    r = fmnist_root(root)
    img_file, lab_file = FILES[split]
    images, labels = read_idx_images(r / img_file), read_idx_labels(r / lab_file)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels in {r}")
    return images, labels


def load_digits_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits (1797 images, pixel values 0..16) rescaled to uint8 0..255, split
    deterministically: (images uint8 "n 8 8", labels "n")."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    perm = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return images[idx], d.target[idx].astype(np.uint8)


def subset(images: np.ndarray, labels: np.ndarray, fraction: float = 1.0, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """A class-stratified random `fraction` of a split (fraction=1 returns it unchanged)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return images, labels
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.permutation(idx)[: max(1, int(round(fraction * len(idx))))])
    keep = np.sort(np.concatenate(keep))
    return images[keep], labels[keep]


def to_tensors(images: np.ndarray, labels: np.ndarray, mean: float | None = None,
               std: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x = (images / 255 - mean) / std as float32 "n 1 h w" (or "n t 1 h w" for clips), y int64.

    mean/std default to the statistics of `images` itself; pass the training set's for a test split.
    """
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    m = float(x.mean()) if mean is None else mean
    s = float(x.std()) if std is None else std
    x = (x - m) / max(s, 1e-6)
    x = x.unsqueeze(-3)  # channel axis just before (h, w)
    return x, torch.from_numpy(np.asarray(labels).astype(np.int64))


def load_image_dataset(name: str, split: str, *, root=None, fraction: float = 1.0, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Raw (uint8 images, labels) of "fashion_mnist" or "digits", optionally subsampled."""
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(split, root)
    elif name == "digits":
        images, labels = load_digits_split(split)
    else:
        raise ValueError(f"dataset name must be 'fashion_mnist' or 'digits', got {name!r}")
    return subset(images, labels, fraction, seed) if split == "train" else (images, labels)
