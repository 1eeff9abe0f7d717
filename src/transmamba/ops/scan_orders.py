"""Scan orders: the token permutations the vision Mamba students scan in, each with its inverse.

A `ScanOrder` over l tokens holds `perm` ("l", long): scan position s reads token perm[s], so

    apply(x)  = x[:, perm]      (token order -> scan order)
    invert(y) = y[:, inv]       (scan order -> token order),  inv[perm[s]] = s,

and invert(apply(x)) == x. Grid orders number tokens row-major (token r * w + c sits at row r,
column c); video orders number them (t, r, c) row-major. Grid orders also carry `steps` ("l",
long): the direction of each move of the scan path (see STEP_*), used by PlainMamba's
direction-aware updates.

Families (one function per paper):
    vim_orders(l)            ViM: forward and backward over the whole sequence (class token inside)
    vmamba_orders(h, w)      VMamba SS2D cross-scan: rows, columns, rows reversed, columns reversed
    plainmamba_orders(h, w)  PlainMamba: zig-zag (snake) rows, snake columns, and both reversed
    videomamba_orders(t, h, w, n_prefix)  VideoMamba: spatial-first (t, h, w) order, forward and back
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# direction of the move that brings the scan onto a token (PlainMamba's direction-aware update)
STEP_BEGIN, STEP_RIGHT, STEP_LEFT, STEP_DOWN, STEP_UP, STEP_JUMP = range(6)
N_STEP_KINDS = 6


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """inv with inv[perm[s]] = s, i.e. perm[inv] == arange(l)."""
    check_permutation("perm", perm)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return inv


def check_permutation(name: str, perm) -> None:
    """perm is a 1-D integer tensor holding each of 0..l-1 exactly once."""
    if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.is_floating_point():
        raise ValueError(f"{name} must be a 1-D integer tensor, got "
                         f"{tuple(perm.shape) if isinstance(perm, torch.Tensor) else type(perm).__name__}")
    l = perm.numel()
    if not torch.equal(torch.sort(perm).values, torch.arange(l, dtype=perm.dtype, device=perm.device)):
        raise ValueError(f"{name} (length {l}) is not a permutation of 0..{l - 1}")


@dataclass(frozen=True)
class ScanOrder:
    """One scan order: perm "l" (scan position -> token), its inverse, optional per-step directions."""

    name: str
    perm: torch.Tensor
    steps: torch.Tensor | None = None

    def __post_init__(self):
        check_permutation(f"ScanOrder {self.name!r} perm", self.perm)
        if self.steps is not None and self.steps.shape != self.perm.shape:
            raise ValueError(f"ScanOrder {self.name!r}: steps has shape {tuple(self.steps.shape)}, "
                             f"perm has {tuple(self.perm.shape)}")

    @property
    def length(self) -> int:
        return self.perm.numel()

    @property
    def inv(self) -> torch.Tensor:
        return inverse_permutation(self.perm)

    def apply(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Token order -> scan order: x.index_select(dim, perm)."""
        return x.index_select(dim, self.perm.to(x.device))

    def invert(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Scan order -> token order: y.index_select(dim, inv)."""
        return y.index_select(dim, self.inv.to(y.device))

    def reversed(self) -> "ScanOrder":
        """The same path walked backwards (its step directions recomputed by the caller if needed)."""
        return ScanOrder(self.name + "_rev", self.perm.flip(0), None)


def _check_grid(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got h={h}, w={w}")


def step_directions(perm: torch.Tensor, h: int, w: int, n_prefix: int = 0) -> torch.Tensor:
    """Kind of move onto each scan position: BEGIN for the first, RIGHT/LEFT/DOWN/UP for a move to a
    4-neighbour on the h x w grid, JUMP otherwise (row wrap, prefix tokens, frame change)."""
    l = perm.numel()
    out = torch.full((l,), STEP_JUMP, dtype=torch.long)
    if l == 0:
        return out
    out[0] = STEP_BEGIN
    hw = h * w
    for s in range(1, l):
        a, b = int(perm[s - 1]) - n_prefix, int(perm[s]) - n_prefix
        if a < 0 or b < 0 or a // hw != b // hw:
            continue
        (ra, ca), (rb, cb) = divmod(a % hw, w), divmod(b % hw, w)
        if ra == rb and cb == ca + 1:
            out[s] = STEP_RIGHT
        elif ra == rb and cb == ca - 1:
            out[s] = STEP_LEFT
        elif ca == cb and rb == ra + 1:
            out[s] = STEP_DOWN
        elif ca == cb and rb == ra - 1:
            out[s] = STEP_UP
    return out


def _grid_order(name: str, perm: torch.Tensor, h: int, w: int) -> ScanOrder:
    return ScanOrder(name, perm, step_directions(perm, h, w))


def identity(l: int, name: str = "forward") -> ScanOrder:
    """perm = arange(l)."""
    return ScanOrder(name, torch.arange(l))


def flipped(l: int, name: str = "backward") -> ScanOrder:
    """perm = arange(l) reversed: perm[s] = l - 1 - s."""
    return ScanOrder(name, torch.arange(l).flip(0))


def raster(h: int, w: int) -> ScanOrder:
    """Row-major: perm[s] = s (row r left to right, rows top to bottom)."""
    _check_grid(h, w)
    return _grid_order("rows", torch.arange(h * w), h, w)


def column(h: int, w: int) -> ScanOrder:
    """Column-major: perm[c * h + r] = r * w + c (column c top to bottom, columns left to right)."""
    _check_grid(h, w)
    return _grid_order("cols", torch.arange(h * w).view(h, w).t().reshape(-1), h, w)


def snake_rows(h: int, w: int) -> ScanOrder:
    """Zig-zag rows: even rows left to right, odd rows right to left (consecutive tokens adjacent)."""
    _check_grid(h, w)
    g = torch.arange(h * w).view(h, w).clone()
    g[1::2] = g[1::2].flip(1)
    return _grid_order("snake_rows", g.reshape(-1), h, w)


def snake_cols(h: int, w: int) -> ScanOrder:
    """Zig-zag columns: even columns top to bottom, odd columns bottom to top."""
    _check_grid(h, w)
    g = torch.arange(h * w).view(h, w).t().clone()  # row c of g = column c of the grid
    g[1::2] = g[1::2].flip(1)
    return _grid_order("snake_cols", g.reshape(-1), h, w)


def reverse_grid(order: ScanOrder, h: int, w: int) -> ScanOrder:
    """`order` walked backwards, with its step directions recomputed."""
    return _grid_order(order.name + "_rev", order.perm.flip(0), h, w)


def vim_orders(l: int) -> list[ScanOrder]:
    """ViM's bidirectional scan over all l tokens (patches with the class token in the middle)."""
    return [identity(l), flipped(l)]


def vmamba_orders(h: int, w: int) -> list[ScanOrder]:
    """VMamba SS2D cross-scan: row-major, column-major, and both reversed."""
    rows, cols = raster(h, w), column(h, w)
    return [rows, cols, reverse_grid(rows, h, w), reverse_grid(cols, h, w)]


def plainmamba_orders(h: int, w: int) -> list[ScanOrder]:
    """PlainMamba's four continuous zig-zag scans: snake rows, snake columns, and both reversed."""
    sr, sc = snake_rows(h, w), snake_cols(h, w)
    return [sr, sc, reverse_grid(sr, h, w), reverse_grid(sc, h, w)]


def spatial_first(t: int, h: int, w: int, n_prefix: int = 0) -> ScanOrder:
    """Spatio-temporal order, spatial first: the prefix tokens, then frame 0 row-major, frame 1, ...

    With tokens laid out as [prefix, (t h w) row-major] this is the identity permutation.
    """
    _check_grid(h, w)
    perm = torch.arange(n_prefix + t * h * w)
    return ScanOrder("spatial_first", perm, step_directions(perm, h, w, n_prefix))


def temporal_first(t: int, h: int, w: int, n_prefix: int = 0) -> ScanOrder:
    """Spatio-temporal order, temporal first: the prefix, then position (0,0) in every frame, ..."""
    _check_grid(h, w)
    body = torch.arange(t * h * w).view(t, h * w).t().reshape(-1) + n_prefix
    perm = torch.cat([torch.arange(n_prefix), body])
    return ScanOrder("temporal_first", perm, step_directions(perm, h, w, n_prefix))


def videomamba_orders(t: int, h: int, w: int, n_prefix: int = 1) -> list[ScanOrder]:
    """VideoMamba: bidirectional scan of the spatial-first sequence [class token, (t h w)]."""
    fwd = spatial_first(t, h, w, n_prefix)
    bwd_perm = fwd.perm.flip(0)
    return [fwd, ScanOrder("spatial_first_rev", bwd_perm, step_directions(bwd_perm, h, w, n_prefix))]


ORDER_FAMILIES = {"vim": vim_orders, "vmamba": vmamba_orders, "plainmamba": plainmamba_orders,
                  "videomamba": videomamba_orders}
