"""What the Mamba-2 and Mamba-1 mixers share: the `SSMMixer` base class and the SSM parameter init.

- `SSMMixer`: input and cache checks, the zero cache, the depthwise causal conv (with or without
  a cache) and the cache update, and the config a `transformers` Mamba/Mamba2 mixer shares.
- `sample_dt_bias`, `inverse_softplus`: dt's bias, softplus^-1 of dt ~ exp(U[log dt_min, log dt_max]).
- `A_from_log`: A = -exp(A_log) (the decay rates, always < 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transmamba.modules.cache import SSMCache
from transmamba.ops.conv1d import causal_conv1d, causal_conv1d_step
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


class SSMMixer(nn.Module):
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
