"""Mamba-2 mixer (SSD) with prefill/step decoding; parameters laid out as HF `Mamba2Mixer`.

    zxbcdt = in_proj(u)                          "b l (d_inner + conv_dim + h)"
    z, xBC, dt = split(zxbcdt)                   conv_dim = d_inner + 2 g n
    xBC = silu(causal_conv1d(xBC))               depthwise, kernel d_conv
    x, B, C = split(xBC)                         "b l (h p)", "b l (g n)", "b l (g n)"
    dt = softplus(dt + dt_bias) (clamped to dt_limit),   A = -exp(A_log)
    y = SSD(x, dt, A, B, C) + D x                state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T
    out = out_proj(rmsnorm_g(y * silu(z)) * norm.weight)     (groups of d_inner / ngroups)

Parameter names (in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj) and the in_proj
split order [z, xBC, dt] are those of `transformers`' Mamba2Mixer (and mamba_ssm's Mamba2 with
d_mlp = 0), so its state_dict loads 1:1 (`Mamba2.from_hf_mixer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.modules.cache import Mamba2Cache
from transmamba.modules.norm import GatedRMSNorm
from transmamba.modules.registry import register_mixer
from transmamba.modules.ssm_mixer import A_from_log, SSMMixer, sample_dt_bias
from transmamba.ops.padding import check_pad, padded_positions
from transmamba.ops.ssd import ssd_chunked, ssd_step


@register_mixer("mamba2")
class Mamba2(SSMMixer):
    """Mamba-2 mixer: "b l d_model" -> "b l d_model"; `step` decodes one token "b d_model".

    nheads = expand * d_model / headdim; B and C are shared by the nheads / ngroups heads of a group.
    """

    def __init__(self, d_model: int, d_state: int = 64, headdim: int = 64, expand: int = 2,
                 ngroups: int = 1, d_conv: int = 4, chunk_size: int = 64, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1, 16), D: bool = True, bias: bool = False,
                 conv_bias: bool = True, norm_eps: float = 1e-5,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.headdim = d_model, d_state, headdim
        self.expand, self.ngroups, self.d_conv, self.chunk_size = expand, ngroups, d_conv, chunk_size
        self.d_inner = round(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads={self.nheads} must be divisible by ngroups={ngroups}")
        self.dt_limit = tuple(dt_limit)
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **kw)
        self.dt_bias = nn.Parameter(sample_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor,
                                                   device).to(dtype or torch.float32))
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"A_init_range must satisfy 0 < lo <= hi, got {A_init_range}")
        A = torch.empty(self.nheads, device=device).uniform_(lo, hi)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.float32))
        self.D = nn.Parameter(torch.ones(self.nheads, **kw)) if D else None
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // ngroups, eps=norm_eps, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)
        for p in (self.dt_bias, self.A_log) + ((self.D,) if D else ()):
            p._no_weight_decay = True

    cache_cls = Mamba2Cache

    @classmethod
    def from_lm_config(cls, cfg, layer: int | None = None) -> "Mamba2":
        """The Mamba-2 mixer of an LM layer (`transmamba.models.lm.LMConfig`: d_model, d_state,
        head_dim, expand, d_conv, chunk_size, norm_eps; every layer alike)."""
        return cls(cfg.d_model, d_state=cfg.d_state, headdim=cfg.head_dim, expand=cfg.expand,
                   d_conv=cfg.d_conv, chunk_size=cfg.chunk_size, norm_eps=cfg.norm_eps)

    # ------------------------------------------------------------------------------ helpers
    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        """softplus(dt + dt_bias), clamped to dt_limit when it is not (0, inf)."""
        dt = F.softplus(dt + self.dt_bias.to(dt.dtype))
        lo, hi = self.dt_limit
        if lo > 0.0 or hi != float("inf"):
            dt = dt.clamp(min=lo, max=hi)
        return dt

    def _split_xBC(self, xBC: torch.Tensor):
        """xBC "... conv_dim" -> x "... h p", B "... g n", C "... g n"."""
        gn = self.ngroups * self.d_state
        xs, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        return (xs.unflatten(-1, (self.nheads, self.headdim)),
                B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)))

    def allocate_cache(self, batch: int, max_len: int | None = None, *, device=None,
                       dtype=None) -> Mamba2Cache:
        """Zero conv state "b conv_dim (d_conv-1)" and SSM state "b h p n" (max_len is unused)."""
        ssm_shape = (self.nheads, self.headdim, self.d_state)
        return self._zero_cache(batch, self.conv_dim, ssm_shape, device, dtype)

    @staticmethod
    def fill_cache(cache: Mamba2Cache, context: int, batch: int = 1) -> None:
        """Make `cache` look as if `context` tokens had been consumed by `batch` rows (random conv
        and SSM states, of the sizes they always have)."""
        cache.conv_state = torch.randn(batch, *cache.conv_state.shape[1:])
        cache.ssm_state = torch.randn(batch, *cache.ssm_state.shape[1:])
        cache.seqlen = context

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, cache: Mamba2Cache | None = None, pad=None) -> torch.Tensor:
        """x "b l d_model" -> "b l d_model"; with a cache, continue from it and update it.

        pad: None or "b" left-padding counts (positions from the cache's start): padded positions
        contribute nothing (conv inputs and x zeroed), so each row equals the row alone."""
        self._check_forward(x, cache)
        b, l, _ = x.shape
        pad = check_pad(pad, b)
        if l == 0:
            return x.new_zeros(b, 0, self.d_model)
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        is_pad = None if pad is None else padded_positions(pad, 0 if cache is None else cache.seqlen, l)
        if is_pad is not None:
            xBC = xBC.masked_fill(is_pad[..., None], 0)
        xBC, conv_state = self._conv(xBC, cache)
        xs, B, C = self._split_xBC(xBC)
        if is_pad is not None:
            xs = xs.masked_fill(is_pad[..., None, None], 0)
        out = ssd_chunked(xs, self._dt(dt), A_from_log(self.A_log), B, C, chunk_size=self.chunk_size,
                          D=self.D, initial_state=None if cache is None else cache.ssm_state,
                          return_final_state=cache is not None)
        y = self._advance(cache, conv_state, out, l)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def step(self, x_t: torch.Tensor, cache: Mamba2Cache) -> torch.Tensor:
        """One token x_t "b d_model" -> "b d_model", advancing `cache` by one position."""
        self._check_step(x_t, cache)
        z, xBC, dt = self.in_proj(x_t).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC, conv_state = self._conv_step(xBC, cache)
        xs, B, C = self._split_xBC(xBC)
        out = ssd_step(cache.ssm_state, xs, self._dt(dt), A_from_log(self.A_log), B, C, D=self.D)
        y = self._advance(cache, conv_state, out, 1)
        return self.out_proj(self.norm(y.flatten(-2), z))

    # ------------------------------------------------------------------------------ HF loading
    @classmethod
    def from_hf_mixer(cls, hf_mixer) -> "Mamba2":
        """A Mamba2 with the config and weights of a `transformers` Mamba2Mixer (copied 1:1)."""
        m = cls._from_hf_config(hf_mixer, headdim=hf_mixer.head_dim, ngroups=hf_mixer.n_groups,
                                chunk_size=hf_mixer.chunk_size, norm_eps=hf_mixer.norm.variance_epsilon,
                                dt_limit=tuple(hf_mixer.time_step_limit))
        m.load_hf_state_dict(hf_mixer.state_dict())
        return m

    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Load HF Mamba2Mixer weights (keys `prefix + name`, e.g. "backbone.layers.0.mixer.")."""
        sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.load_state_dict(sd, strict=True)
