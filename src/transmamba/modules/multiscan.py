"""Multi-directional Mamba mixer: one selective-scan branch per scan order, merged.

    x, z = split(in_proj(u))                                  "b l d_inner" each (token order)
    for each order k (perm_k, inv_k):
        x_k = x[:, perm_k]                                    scan order
        x_k = silu(causal_conv1d(x_k, conv_weight[k]))        its own causal conv (conv="1d")
        dt_k, B_k, C_k = split(x_k @ x_proj_weight[k].T)      "b l r", "b l n", "b l n"
        B_k = B_k + dir_embed[steps_k]                        (direction_embed: PlainMamba)
        delta_k = softplus(dt_k @ dt_proj_weight[k].T + dt_proj_bias[k])
        y_k = selective_scan(x_k, delta_k, -exp(A_log[k]), B_k, C_k, D=D[k])   scan order
    y = merge_k y_k[:, inv_k]                                 mean (default) or sum, token order
    out = out_proj(y * silu(z))

x, delta, B and C of a branch are all computed from the permuted x, so they are permuted
together. With conv="2d" (VMamba's SS2D) one depthwise k x k Conv2d over the h x w token grid
replaces the per-branch causal convs and runs before the permutations.

Per-direction outputs (for distillation), in scan order k:
    dir_k = out_proj(y_k * silu(z[:, perm_k]))                "b l d_model"
so that, with merge="mean", out == mean_k dir_k[:, inv_k] (out_proj is affine and the gate is
elementwise); with merge="sum", out == sum_k dir_k[:, inv_k] - (K - 1) * out_proj.bias.

ViM (bimamba v2) and VMamba differ from this only in details listed in `transmamba.models.vision`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.ops.scan_orders import N_STEP_KINDS, ScanOrder
from transmamba.modules.ssm_mixer import sample_dt_bias
from transmamba.ops.conv1d import causal_conv1d
from transmamba.ops.selective_scan import selective_scan, selective_scan_ref
from transmamba.ops.validate import check_dim, check_tensor

MERGES = ("mean", "sum")


class MultiScanMamba(nn.Module):
    """K scan orders over one token sequence: "b l d_model" -> "b l d_model".

    orders: the K ScanOrders (all of length l). direction_embed: add a learned vector per step
    direction (ScanOrder.steps) to B. conv: "1d" (a causal conv per branch) or "2d" (one
    depthwise Conv2d over `grid`=(h, w), shared by the branches; needs l == h * w and odd d_conv).
    """

    def __init__(self, d_model: int, orders: Sequence[ScanOrder], d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto",
                 direction_embed: bool = False, merge: str = "mean", conv: str = "1d",
                 grid: tuple[int, int] | None = None, bias: bool = False, conv_bias: bool = True,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        if len(orders) == 0:
            raise ValueError("orders must hold at least one ScanOrder")
        lengths = {o.length for o in orders}
        if len(lengths) != 1:
            raise ValueError(f"all orders must have the same length, got {sorted(lengths)}")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        if conv not in ("1d", "2d"):
            raise ValueError(f"conv must be '1d' or '2d', got {conv!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.n_orders, self.length = len(orders), lengths.pop()
        self.order_names = [o.name for o in orders]
        self.merge, self.conv, self.grid = merge, conv, grid
        K, di, n, r = self.n_orders, self.d_inner, d_state, self.dt_rank
        self.register_buffer("perms", torch.stack([o.perm for o in orders]), persistent=False)
        self.register_buffer("invs", torch.stack([o.inv for o in orders]), persistent=False)

        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        if conv == "1d":
            bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init for a depthwise kernel
            self.conv_weight = nn.Parameter(torch.empty(K, di, d_conv).uniform_(-bound, bound))
            self.conv_bias = (nn.Parameter(torch.empty(K, di).uniform_(-bound, bound))
                              if conv_bias else None)
        else:
            if grid is None or grid[0] * grid[1] != self.length:
                raise ValueError(f"conv='2d' needs grid=(h, w) with h * w == l={self.length}, got {grid}")
            if d_conv % 2 == 0:
                raise ValueError(f"conv='2d' needs an odd d_conv, got {d_conv}")
            self.conv2d = nn.Conv2d(di, di, d_conv, padding=d_conv // 2, groups=di, bias=conv_bias)
        bound = r ** -0.5
        self.x_proj_weight = nn.Parameter(
            torch.empty(K, r + 2 * n, di).uniform_(-di ** -0.5, di ** -0.5))
        self.dt_proj_weight = nn.Parameter(torch.empty(K, di, r).uniform_(-bound, bound))
        self.dt_proj_bias = nn.Parameter(
            torch.stack([sample_dt_bias(di, dt_min, dt_max, dt_init_floor) for _ in range(K)]))
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(K, di, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(K, di))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        if direction_embed:
            missing = [o.name for o in orders if o.steps is None]
            if missing:
                raise ValueError(f"direction_embed=True needs step directions on every order; "
                                 f"{missing} have none")
            self.register_buffer("steps", torch.stack([o.steps for o in orders]), persistent=False)
            self.dir_embed = nn.Parameter(torch.randn(N_STEP_KINDS, n) * 0.02)
        else:
            self.dir_embed = None
        self.out_proj = nn.Linear(di, d_model, bias=bias)

    # ------------------------------------------------------------------------------------------
    def _conv2d(self, x: torch.Tensor) -> torch.Tensor:
        """silu(depthwise Conv2d) over the (h, w) grid, token order: "b l d" -> "b l d"."""
        h, w = self.grid
        xg = x.transpose(1, 2).unflatten(2, (h, w))  # "b d h w"
        return F.silu(self.conv2d(xg)).flatten(2).transpose(1, 2)

    def branch(self, x: torch.Tensor, k: int, *, conv_done: bool = False) -> torch.Tensor:
        """Scan branch k on x "b l d_inner" in TOKEN order; returns y_k "b l d_inner" in SCAN order."""
        xk = x.index_select(1, self.perms[k])
        if not conv_done:
            bias = None if self.conv_bias is None else self.conv_bias[k]
            xk = causal_conv1d(xk, self.conv_weight[k], bias, activation="silu")
        r, n = self.dt_rank, self.d_state
        dt, B, C = torch.split(xk @ self.x_proj_weight[k].t(), [r, n, n], dim=-1)
        if self.dir_embed is not None:
            B = B + self.dir_embed[self.steps[k]]
        delta = F.softplus(dt @ self.dt_proj_weight[k].t() + self.dt_proj_bias[k])
        A = -torch.exp(self.A_log[k])
        return selective_scan(xk, delta, A, B.contiguous(), C.contiguous(), D=self.D[k])

    def forward(self, u: torch.Tensor, return_directions: bool = False):
        """u "b l d_model" -> out "b l d_model" (and the K direction outputs "b l d_model", each in
        its own scan order, if return_directions)."""
        check_tensor("u", u, 3, "(b, l, d_model)")
        check_dim("u", u, 1, self.length, "the scan orders' length l")
        check_dim("u", u, 2, self.d_model, "d_model")
        x, z = self.in_proj(u).chunk(2, dim=-1)
        conv_done = self.conv == "2d"
        if conv_done:
            x = self._conv2d(x)
        ys = [self.branch(x, k, conv_done=conv_done) for k in range(self.n_orders)]
        y = torch.stack([yk.index_select(1, self.invs[k]) for k, yk in enumerate(ys)]).sum(0)
        if self.merge == "mean":
            y = y / self.n_orders
        out = self.out_proj(y * F.silu(z))
        if not return_directions:
            return out
        dirs = [self.out_proj(yk * F.silu(z.index_select(1, self.perms[k])))
                for k, yk in enumerate(ys)]
        return out, dirs

    def forward_ref(self, u: torch.Tensor) -> torch.Tensor:
        """Slow twin of `forward`: branch k built from explicit python-indexed permutations
        (x_k[:, s] = x[:, perm_k[s]]; y[:, perm_k[s]] += y_k[:, s]) and the direction-output
        identity out = mean_k dir_k / sum_k dir_k - (K-1) bias, token by token."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        if self.conv == "2d":
            x = self._conv2d(x)
        l = u.shape[1]
        y = torch.zeros_like(x)
        for k in range(self.n_orders):
            perm = [int(p) for p in self.perms[k]]
            xk = torch.stack([x[:, perm[s]] for s in range(l)], dim=1)
            if self.conv == "1d":
                w = self.conv_weight[k]
                kk = w.shape[1]
                xpad = F.pad(xk, (0, 0, kk - 1, 0))
                conv = torch.stack([(xpad[:, s:s + kk] * w.t()).sum(1) for s in range(l)], dim=1)
                if self.conv_bias is not None:
                    conv = conv + self.conv_bias[k]
                xk = F.silu(conv)
            r, n = self.dt_rank, self.d_state
            dt, B, C = torch.split(xk @ self.x_proj_weight[k].t(), [r, n, n], dim=-1)
            if self.dir_embed is not None:
                B = B + self.dir_embed[self.steps[k]]
            delta = F.softplus(dt @ self.dt_proj_weight[k].t() + self.dt_proj_bias[k])
            yk = selective_scan_ref(xk, delta, -torch.exp(self.A_log[k]), B, C, D=self.D[k])
            for s in range(l):
                y[:, perm[s]] = y[:, perm[s]] + yk[:, s]
        if self.merge == "mean":
            y = y / self.n_orders
        return self.out_proj(y * F.silu(z))
