"""Input checks shared by the ops: each raises ValueError naming the argument and its shape.

Kernels call these at their entry so that bad input never surfaces as a traceback from deep
inside a kernel.
"""

from __future__ import annotations

import torch


def check_tensor(name: str, t, rank: int, doc: str) -> torch.Tensor:
    """`t` is a floating tensor of the given rank; `doc` is its einops shape, e.g. "(b, l, h, p)"."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {doc}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have shape {doc} (rank {rank}), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """t.shape[dim] == expected, where `what` says where the expected size comes from."""
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {t.shape[dim]} at dim {dim} (shape {tuple(t.shape)}), "
            f"expected {expected} to match {what}"
        )


def check_finite(name: str, t: torch.Tensor) -> None:
    """No NaN or Inf in t (skipped while tracing/compiling)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "Inf"
        raise ValueError(f"{name} contains {bad} (shape {tuple(t.shape)})")


def check_divisible(name_a: str, a: int, name_b: str, b: int) -> None:
    """a is divisible by b."""
    if b <= 0 or a % b != 0:
        raise ValueError(f"{name_a}={a} must be divisible by {name_b}={b}")


def check_shape(name: str, t, rank: int, doc: str, sizes) -> torch.Tensor:
    """check_tensor, then t.shape[i] == size for each (size, what) in `sizes`, from dim 0 on."""
    check_tensor(name, t, rank, doc)
    for dim, (size, what) in enumerate(sizes):
        check_dim(name, t, dim, size, what)
    return t


def check_positive(name: str, t: torch.Tensor) -> None:
    """t is finite and > 0 everywhere, as a softplus output is (skipped while tracing/compiling)."""
    check_finite(name, t)
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if t.numel() and not bool((t > 0).all()):
        raise ValueError(f"{name} must be positive (softplus already applied), "
                         f"got min {t.min().item():.3g} (shape {tuple(t.shape)})")


def check_chunk_size(chunk_size) -> None:
    """chunk_size is a positive int (not a bool)."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def check_groups(name: str, t: torch.Tensor, h: int, heads_of: str) -> int:
    """t "... g n" has g >= 1 groups that split the h heads of `heads_of` evenly; returns g."""
    g = t.shape[-2]
    if g < 1:
        raise ValueError(f"{name} must have at least one group, got shape {tuple(t.shape)}")
    check_divisible(f"h (heads of {heads_of})", h, f"g (groups of {name})", g)
    return g
