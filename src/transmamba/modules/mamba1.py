"""Mamba-1 mixer (selective scan) with prefill/step decoding; parameter names as mamba_ssm / HF.

    x, z = split(in_proj(u))                     "b l d_inner" each
    x = silu(causal_conv1d(x))                   depthwise, kernel d_conv
    dt, B, C = split(x_proj(x))                  "b l dt_rank", "b l n", "b l n"
    delta = softplus(dt_proj(dt))                "b l d_inner" (dt_proj has the bias)
    A = -exp(A_log)                              "d_inner n"
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ;  y_t = (h_t C_t + D x_t) * silu(z_t)
    out = out_proj(y)

Names in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj match HF `MambaMixer`
(`Mamba1.from_hf_mixer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.modules.cache import Mamba1Cache
from transmamba.modules.ssm_mixer import A_from_log, SSMMixer, sample_dt_bias
from transmamba.ops.selective_scan import selective_scan, selective_scan_step


class Mamba1(SSMMixer):
    """Mamba-1 mixer: "b l d_model" -> "b l d_model"; `step` decodes one token "b d_model"."""

    cache_cls = Mamba1Cache

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, chunk_size: int = 64,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = round(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **kw)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            elif dt_init == "random":
                self.dt_proj.weight.uniform_(-std, std)
            else:
                raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
            self.dt_proj.bias.copy_(sample_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, device))
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.float32))
        self.D = nn.Parameter(torch.ones(self.d_inner, **kw))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def allocate_cache(self, batch: int, max_len: int | None = None, *, device=None,
                       dtype=None) -> Mamba1Cache:
        """Zero conv state "b d_inner (d_conv-1)" and SSM state "b d_inner n" (max_len unused)."""
        return self._zero_cache(batch, self.d_inner, (self.d_inner, self.d_state), device, dtype)

    def _ssm_inputs(self, x: torch.Tensor):
        """x "... d_inner" -> delta "... d_inner", B, C "... n"."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C

    def forward(self, x: torch.Tensor, cache: Mamba1Cache | None = None) -> torch.Tensor:
        """x "b l d_model" -> "b l d_model"; with a cache, continue from it and update it."""
        self._check_forward(x, cache)
        b, l, _ = x.shape
        if l == 0:
            return x.new_zeros(b, 0, self.d_model)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv_state = self._conv(xs, cache)
        delta, B, C = self._ssm_inputs(xs)
        out = selective_scan(xs, delta, A_from_log(self.A_log), B, C, D=self.D, z=z,
                             initial_state=None if cache is None else cache.ssm_state,
                             return_final_state=cache is not None, chunk_size=self.chunk_size)
        return self.out_proj(self._advance(cache, conv_state, out, l))

    def step(self, x_t: torch.Tensor, cache: Mamba1Cache) -> torch.Tensor:
        """One token x_t "b d_model" -> "b d_model", advancing `cache` by one position."""
        self._check_step(x_t, cache)
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        xs, conv_state = self._conv_step(xs, cache)
        delta, B, C = self._ssm_inputs(xs)
        out = selective_scan_step(cache.ssm_state, xs, delta, A_from_log(self.A_log), B, C, D=self.D, z_t=z)
        return self.out_proj(self._advance(cache, conv_state, out, 1))

    @classmethod
    def from_hf_mixer(cls, hf_mixer) -> "Mamba1":
        """A Mamba1 with the config and weights of a `transformers` MambaMixer (copied 1:1)."""
        m = cls._from_hf_config(hf_mixer, dt_rank=hf_mixer.time_step_rank)
        m.load_state_dict(hf_mixer.state_dict(), strict=True)
        return m
