"""Input checks shared by the ops and mixers: each raises ValueError naming the argument and its shape.

Kernels call these at their entry so that bad input never surfaces as a traceback from deep
inside a kernel.

Finiteness: the scans (`ssd_chunked`, `ssd_step`, `selective_scan`, `memory_convert`) and the
mixers' attention paths refuse NaN/Inf in their inputs (x, dt, A, B, C; K, V) with a
`NumericalError` (a ValueError) naming the tensor, so a blown-up activation stops where it enters instead of silently turning
every later output into NaN. Each check is one min/max reduction of the tensor (`torch.aminmax`:
NaN propagates to both, Inf shows in one; an order of magnitude cheaper than
`torch.isfinite(t).all()` on a CPU), and a group of tensors is read back with one host sync
(`check_all_finite`). Hot loops that have already validated their inputs can switch the checks
off with the one flag, `CHECK_FINITE` (module-level, default True):

    from transmamba.ops import validate
    validate.CHECK_FINITE = False            # or, for a block:  with validate.finite_checks(False): ...

Shape, dtype and TransPoint checks (no device work) and the sign checks (A < 0, dt > 0: one
min/max, a NumericalError too) are not switched off by the flag. A mixer's decoding step skips the
argument checks of the step ops it calls (`ssd_step(..., check=False)`, `causal_conv1d_step`), whose
arguments it built itself. All checks are skipped while tracing or compiling.
"""

from __future__ import annotations

import contextlib
import numbers

import torch


class NumericalError(ValueError):
    """A tensor holds values an op cannot take: NaN/Inf, or the wrong sign (A >= 0, dt <= 0).
    The training engine reports it as a divergence when the weights produced it."""


CHECK_FINITE = True  # the NaN/Inf checks of the ops and mixers; False skips them (see the docstring)


@contextlib.contextmanager
def finite_checks(enabled: bool):
    """Set `CHECK_FINITE` to `enabled` inside a `with` block (restored afterwards)."""
    global CHECK_FINITE
    before, CHECK_FINITE = CHECK_FINITE, bool(enabled)
    try:
        yield
    finally:
        CHECK_FINITE = before


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


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


def _raise_not_finite(name: str, t: torch.Tensor) -> None:
    bad = "NaN" if torch.isnan(t).any() else "Inf"
    raise NumericalError(f"{name} contains {bad} (shape {tuple(t.shape)}, dtype {t.dtype})")


def _min_max(t: torch.Tensor) -> torch.Tensor:
    """[min, max] of a non-empty floating tensor, on its device: both finite iff every entry is (a
    NaN anywhere propagates to both; +-Inf shows in one). One reduction pass, no bool temporary:
    ~10x cheaper than `torch.isfinite(t).all()` on a CPU."""
    return torch.stack(torch.aminmax(t.detach()))


def check_finite(name: str, t: torch.Tensor) -> None:
    """No NaN or Inf in t (skipped with CHECK_FINITE = False and while tracing/compiling)."""
    if not CHECK_FINITE or _tracing() or not t.numel():
        return
    if not bool(torch.isfinite(_min_max(t)).all()):
        _raise_not_finite(name, t)


def check_all_finite(**tensors) -> None:
    """check_finite on each named tensor (None entries skipped), read back with one host sync:
    `check_all_finite(x=x, B=B, C=C)`. The error names the first tensor with a NaN/Inf."""
    if not CHECK_FINITE or _tracing():
        return
    named = [(k, t) for k, t in tensors.items() if t is not None and t.numel()]
    if not named:
        return
    dev = named[0][1].device
    ok = torch.isfinite(torch.stack([_min_max(t).to(device=dev, dtype=torch.float32) for _, t in named])).all(1)
    if not bool(ok.all()):
        for (name, t), good in zip(named, ok.tolist()):
            if not good:
                _raise_not_finite(name, t)


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


def _check_sign(name: str, t: torch.Tensor, positive: bool, what: str) -> None:
    """t > 0 (positive) or t < 0 everywhere, and finite unless CHECK_FINITE is off: one reduction
    (min and max) and one host sync."""
    if _tracing() or not t.numel():
        return
    lo, hi = _min_max(t).unbind()
    ok = lo > 0 if positive else hi < 0  # False for a NaN as well
    if CHECK_FINITE:
        ok = ok & torch.isfinite(hi if positive else lo)
    if not bool(ok):
        check_finite(name, t)
        extreme = f"min {lo.item():.3g}" if positive else f"max {hi.item():.3g}"
        raise NumericalError(f"{name} must be {what}, got {extreme} (shape {tuple(t.shape)})")


def check_positive(name: str, t: torch.Tensor) -> None:
    """t is finite and > 0 everywhere, as a softplus output is (skipped while tracing/compiling;
    the finiteness part also with CHECK_FINITE = False)."""
    _check_sign(name, t, True, "positive (softplus already applied)")


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


def check_negative(name: str, t: torch.Tensor) -> None:
    """t < 0 everywhere, as a decay rate A = -exp(A_log) is (A >= 0 would make the state grow or
    never decay); finite too (as check_positive)."""
    _check_sign(name, t, False, "negative everywhere (A = -exp(A_log))")


def check_transpoint(transpoint, batch: int | None = None, name: str = "transpoint"):
    """A TransPoint: an int >= 0 (not a bool), or an integer tensor of shape (batch,) with every
    entry >= 0 (one P per row). Returns the int, or the tensor as int64. Anything else (a float,
    a string, a list, a bool, a float or bool tensor, another shape, a negative entry) is a
    ValueError naming `name`."""
    if isinstance(transpoint, torch.Tensor):
        bad_dtype = transpoint.is_floating_point() or transpoint.is_complex() or transpoint.dtype == torch.bool
        if bad_dtype or transpoint.dim() != 1 or (batch is not None and transpoint.shape[0] != batch):
            want = f"({batch},)" if batch is not None else "(b,)"
            raise ValueError(f"{name} must be an int >= 0 or an integer tensor of shape {want}, got a "
                             f"tensor of shape {tuple(transpoint.shape)} and dtype {transpoint.dtype}")
        if transpoint.numel() and not _tracing() and int(transpoint.min()) < 0:
            raise ValueError(f"{name} must be >= 0 in every row, got min {int(transpoint.min())}")
        return transpoint.long()
    return check_transpoint_int(transpoint, name)


def check_transpoint_int(transpoint, name: str = "transpoint") -> int:
    """An int TransPoint >= 0 (not a bool, not a float, not a tensor), returned as int."""
    if isinstance(transpoint, bool) or not isinstance(transpoint, numbers.Integral):
        raise ValueError(f"{name} must be an int >= 0 (or an integer tensor of shape (b,) where one P per "
                         f"row is allowed), got {transpoint!r} of type {type(transpoint).__name__}")
    if transpoint < 0:
        raise ValueError(f"{name} must be >= 0, got {transpoint}")
    return int(transpoint)


def check_A_D(A, D, h: int, of: str = "x") -> None:
    """A "(h,)" (finite, negative) and D "(h,)" | None, where h is the number of heads of `of`
    (the per-head parameters of the SSD scan and the memory converter)."""
    check_shape("A", A, 1, "(h,)", [(h, f"heads h={h} of {of}")])
    check_negative("A", A)
    if D is not None:
        check_shape("D", D, 1, "(h,)", [(h, f"heads h={h} of {of}")])


def check_ssd_state(name: str, state, b: int, h: int, p: int, n: int) -> None:
    """An SSD state "(b, h, p, n)" of these sizes."""
    sizes = [(b, f"batch b={b}"), (h, f"heads h={h}"), (p, f"head dim p={p}"), (n, f"state dim n={n}")]
    check_shape(name, state, 4, "(b, h, p, n)", sizes)
