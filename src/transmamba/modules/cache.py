"""Decoding caches of the mixers: small dataclasses that `forward(x, cache)` fills and `step` advances.

- `SSMCache` (Mamba-2 and Mamba-1): the last k-1 conv inputs "b c (k-1)" and the SSM state
  (Mamba-2 "b h p n", Mamba-1 "b d n"), plus how many tokens have been consumed.
- `KVCache` (attention): keys/values "b kv_heads L head_dim", either preallocated to `max_len`
  (written in place) or growing by concatenation (`max_len=None`).
- `SwitchCache` (TransMamba-Switch): a KV cache (keys, values and dt "b T *") until the layer's
  TransPoint, then the SSM state "b h p n" the Memory converter makes of it (the KV cache freed).
  With head-level TransPoints (`transmamba.modules.head_transpoints`) it holds one sub-cache per
  group of KV heads of equal TransPoint (`groups`), each with that group's K/V/dt or SSM state only,
  so a group's K/V is freed when its heads cross their P.

Every mixer makes its own with `allocate_cache(batch, max_len=None, *, device=None, dtype=None)`
(the Switch mixer also takes `transpoint=`).

The mixers replace the tensors held here rather than writing into them (except the preallocated
KV buffers), so a cache used under autograd keeps a valid graph; decode under `torch.no_grad()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transmamba.modules.head_transpoints import HeadTransPoints


@dataclass
class SSMCache:
    """conv_state "b c (k-1)", ssm_state "b h p n" (Mamba-2) or "b d n" (Mamba-1), seqlen tokens seen."""

    conv_state: torch.Tensor
    ssm_state: torch.Tensor
    seqlen: int = 0

    @property
    def batch(self) -> int:
        return self.conv_state.shape[0]

    def reset(self) -> None:
        """Back to the empty-prefix state (zeros)."""
        self.conv_state = torch.zeros_like(self.conv_state)
        self.ssm_state = torch.zeros_like(self.ssm_state)
        self.seqlen = 0


class Mamba2Cache(SSMCache):
    """SSMCache of a `Mamba2` mixer (ssm_state "b h p n")."""


class Mamba1Cache(SSMCache):
    """SSMCache of a `Mamba1` mixer (ssm_state "b d n")."""


@dataclass
class KVCache:
    """Keys and values "b kv_heads L head_dim" of the `length` tokens seen so far.

    With `max_len` set, `k`/`v` are buffers of that length written in place; with `max_len=None`
    they hold exactly `length` positions and grow by concatenation.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    max_len: int | None = None
    pad: torch.Tensor | None = None  # "b" left padding of the prompt (int64), None: no padding

    @classmethod
    def allocate(cls, batch: int, n_kv_heads: int, head_dim: int, max_len: int | None = None,
                 *, device=None, dtype=None) -> "KVCache":
        shape = (batch, n_kv_heads, 0 if max_len is None else max_len, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype),
                   torch.zeros(shape, device=device, dtype=dtype), 0, max_len)

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add "b kv_heads l head_dim" keys/values; returns all keys/values so far (views)."""
        l = k_new.shape[2]
        if self.max_len is None:
            self.k = torch.cat([self.k, k_new.to(self.k.dtype)], dim=2)
            self.v = torch.cat([self.v, v_new.to(self.v.dtype)], dim=2)
        else:
            if self.length + l > self.max_len:
                raise ValueError(f"KVCache overflow: {self.length} cached + {l} new tokens > "
                                 f"max_len={self.max_len}")
            self.k[:, :, self.length:self.length + l] = k_new
            self.v[:, :, self.length:self.length + l] = v_new
        self.length += l
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reset(self) -> None:
        self.length = 0
        if self.max_len is None:
            self.k = self.k[:, :, :0]
            self.v = self.v[:, :, :0]


@dataclass
class SwitchCache:
    """Decoding state of a `SwitchMixer`: tokens before `transpoint` are held in the KV cache
    (k, v, dt, growing by doubling up to the TransPoint); from the TransPoint on, ssm_state.

    Head-level TransPoints (KV heads with different P): `groups` holds one SwitchCache per group of
    KV heads of equal P (its `heads`, its own `transpoint`, k/v/dt/ssm_state of those heads only, an
    empty conv_state "b 0 (k-1)"); this cache then keeps only the layer's conv_state, pos and pad."""

    conv_state: torch.Tensor  # "b c (k-1)"
    transpoint: object  # an int, one per row "b" (int64), a HeadTransPoints or one per row and KV head "b g"
    pos: int = 0  # tokens consumed so far
    k: torch.Tensor | None = None  # "b T g n" (RoPE'd if rope), capacity T >= pos
    v: torch.Tensor | None = None  # "b T g p"
    dt: torch.Tensor | None = None  # "b T h"
    ssm_state: torch.Tensor | None = None  # "b h p n", set once pos >= transpoint
    pad: torch.Tensor | None = None  # "b" left padding of the prompt (int64), None: no padding
    groups: list | None = None  # head-level TransPoints: one SwitchCache per group of KV heads
    heads: tuple | None = None  # of a group's sub-cache: its KV heads

    @property
    def batch(self) -> int:
        return self.conv_state.shape[0]

    def _transpoint_bound(self, pick) -> int:
        """pick (`min` or `max`) of this cache's TransPoints: over the KV heads of a HeadTransPoints,
        over the rows (and heads) of a tensor (0 when it is empty), or the one int."""
        P = self.transpoint
        if isinstance(P, HeadTransPoints):
            return pick(P.P)
        return pick(P.flatten().tolist(), default=0) if isinstance(P, torch.Tensor) else P

    @property
    def min_transpoint(self) -> int:
        return self._transpoint_bound(min)

    @property
    def max_transpoint(self) -> int:
        return self._transpoint_bound(max)

    def nbytes(self) -> int:
        """Bytes held by the tensors of this cache (and of its head groups' sub-caches)."""
        ts = (self.conv_state, self.k, self.v, self.dt, self.ssm_state)
        own = sum(t.numel() * t.element_size() for t in ts if t is not None)
        return own + sum(g.nbytes() for g in self.groups or ())
