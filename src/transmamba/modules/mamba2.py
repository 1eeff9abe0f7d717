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

import math

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.modules.cache import Mamba2Cache, SSMCache
from transmamba.modules.norm import GatedRMSNorm
from transmamba.ops.conv1d import causal_conv1d, causal_conv1d_step
from transmamba.ops.ssd import ssd_chunked, ssd_step
from transmamba.ops.validate import check_dim, check_tensor


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y:  x = y + log(1 - exp(-y))  (y > 0)."""
    return y + torch.log(-torch.expm1(-y))


def sample_dt_bias(n: int, dt_min: float, dt_max: float, dt_init_floor: float,
                   device=None) -> torch.Tensor:
    """dt ~ exp(U[log dt_min, log dt_max]) clamped below by dt_init_floor; returns softplus^-1(dt)."""
    dt = torch.exp(torch.rand(n, device=device) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return inverse_softplus(dt)


def A_from_log(A_log: torch.Tensor) -> torch.Tensor:
    """A = -exp(A_log), computed in at least float32."""
    return -torch.exp(A_log.to(torch.promote_types(A_log.dtype, torch.float32)))


class _SSMMixer(nn.Module):
    """What `Mamba2` and `Mamba1` share: input and cache checks, the zero cache, the depthwise causal
    conv (with or without a cache) and the cache update. Subclasses set `cache_cls` and define
    d_model, d_inner, d_conv, in_proj and conv1d."""

    cache_cls: type[SSMCache]

    def _check_x(self, name: str, x, rank: int, doc: str) -> None:
        check_tensor(name, x, rank, doc)
        check_dim(name, x, -1, self.d_model, "d_model")

    def _check_forward(self, x, cache: SSMCache | None) -> None:
        """x "b l d_model", and a cache (if given) of the same batch."""
        self._check_x("x", x, 3, "(b, l, d_model)")
        if cache is not None and cache.batch != x.shape[0]:
            raise ValueError(f"cache has batch {cache.batch}, x has batch {x.shape[0]} (shape {tuple(x.shape)})")

    def _check_step(self, x_t, cache: SSMCache) -> None:
        """x_t "b d_model" and a cache of the same batch."""
        self._check_x("x_t", x_t, 2, "(b, d_model)")
        if cache is None or cache.batch != x_t.shape[0]:
            raise ValueError(f"cache must be a {self.cache_cls.__name__} with batch {x_t.shape[0]} "
                             f"(x_t shape {tuple(x_t.shape)})")

    def _zero_cache(self, batch: int, conv_dim: int, ssm_shape: tuple[int, ...], device,
                    dtype) -> SSMCache:
        """Conv state "b conv_dim (d_conv-1)" in `dtype`, SSM state "b *ssm_shape" in at least float32
        (device and dtype default to in_proj's)."""
        w = self.in_proj.weight
        device = device or w.device
        dtype = dtype or w.dtype
        sdt = torch.promote_types(dtype, torch.float32)
        return self.cache_cls(
            torch.zeros(batch, conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch, *ssm_shape, device=device, dtype=sdt))

    def _conv(self, x: torch.Tensor, cache: SSMCache | None):
        """(silu(causal_conv1d(x)) "b l c", the conv state it ends in, or None without a cache)."""
        conv_w = self.conv1d.weight.squeeze(1)
        if cache is None:
            return causal_conv1d(x, conv_w, self.conv1d.bias, activation="silu"), None
        return causal_conv1d(x, conv_w, self.conv1d.bias, activation="silu",
                             initial_state=cache.conv_state, return_final_state=True)

    def _conv_step(self, x_t: torch.Tensor, cache: SSMCache):
        """One token "b c" through the conv: (silu output "b c", new conv state)."""
        return causal_conv1d_step(cache.conv_state, x_t, self.conv1d.weight.squeeze(1),
                                  self.conv1d.bias, "silu")

    @staticmethod
    def _advance(cache: SSMCache | None, conv_state, out, n: int) -> torch.Tensor:
        """The scan output y. With a cache, `out` is (y, ssm_state): the cache takes the new states
        (in its own dtypes) and counts n more tokens; without one, `out` is y."""
        if cache is None:
            return out
        y, ssm_state = out
        cache.conv_state = conv_state.to(cache.conv_state.dtype)
        cache.ssm_state = ssm_state.to(cache.ssm_state.dtype)
        cache.seqlen += n
        return y

    @classmethod
    def _from_hf_config(cls, hf_mixer, **kw):
        """cls with the config a `transformers` Mamba/Mamba2 mixer shares (on its device and dtype),
        plus `kw`; weights are not copied."""
        if getattr(hf_mixer, "activation", "silu") != "silu":
            raise ValueError(f"hf_mixer.activation must be 'silu', got {hf_mixer.activation!r}")
        d_model, d_inner = hf_mixer.hidden_size, hf_mixer.intermediate_size
        w = hf_mixer.in_proj.weight
        m = cls(d_model, d_state=hf_mixer.ssm_state_size, d_conv=hf_mixer.conv_kernel_size,
                expand=d_inner / d_model, bias=hf_mixer.use_bias, conv_bias=hf_mixer.use_conv_bias,
                device=w.device, dtype=w.dtype, **kw)
        if m.d_inner != d_inner:
            raise ValueError(f"hf_mixer.intermediate_size={d_inner} is not expand * hidden_size")
        return m


class Mamba2(_SSMMixer):
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

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, cache: Mamba2Cache | None = None) -> torch.Tensor:
        """x "b l d_model" -> "b l d_model"; with a cache, continue from it and update it."""
        self._check_forward(x, cache)
        b, l, _ = x.shape
        if l == 0:
            return x.new_zeros(b, 0, self.d_model)
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC, conv_state = self._conv(xBC, cache)
        xs, B, C = self._split_xBC(xBC)
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
