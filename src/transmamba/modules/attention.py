"""Causal multi-head self-attention with RoPE, grouped-query heads and a KV cache (HF Llama names).

    q = rope(q_proj(x)), k = rope(k_proj(x)), v = v_proj(x)     heads "b l h d", kv heads "b l hk d"
    o_i = sum_{j <= pos_i} softmax_j(q_i . k_j / sqrt(d)) v_j     (query head h reads kv head h // (h/hk))
    out = o_proj(o)

Positions continue from the cache: the first new token of a forward with a cache holding T tokens
has position T, both for RoPE and for the causal mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.modules.cache import KVCache
from transmamba.modules.registry import register_mixer
from transmamba.ops.decode_attention import DECODE_DTYPES, decode_attention
from transmamba.ops.padding import check_pad, key_padding_mask
from transmamba.ops.rope import apply_rope, rope_cos_sin
from transmamba.ops.validate import check_all_finite, check_dim, check_tensor


@register_mixer("attention")
class CausalSelfAttention(nn.Module):
    """Llama-style attention: "b l d_model" -> "b l d_model"; `step` decodes one token."""

    cache_cls = KVCache

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope_theta: float = 10000.0, bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.d_model, self.n_heads = d_model, n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
            head_dim = d_model // n_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, **kw)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * head_dim, **kw)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * head_dim, **kw)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, **kw)

    @classmethod
    def from_lm_config(cls, cfg, layer: int | None = None) -> "CausalSelfAttention":
        """The attention mixer of an LM layer (`transmamba.models.lm.LMConfig`: d_model, n_heads,
        n_kv_heads, head_dim, rope_theta; every layer alike)."""
        return cls(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, rope_theta=cfg.rope_theta)

    def allocate_cache(self, batch: int, max_len: int | None = None, *, device=None,
                       dtype=None) -> KVCache:
        """Empty KV cache "b kv_heads L head_dim": preallocated to max_len, or growing if None."""
        w = self.q_proj.weight
        return KVCache.allocate(batch, self.n_kv_heads, self.head_dim, max_len,
                                device=device or w.device, dtype=dtype or w.dtype)

    @staticmethod
    def fill_cache(cache: KVCache, context: int, batch: int = 1) -> None:
        """Make `cache` look as if `context` tokens had been consumed by `batch` rows: `context`
        random keys and values (the preallocated capacity kept). A preallocated cache shorter than
        the context is a ValueError."""
        if cache.max_len is not None and context > cache.max_len:
            raise ValueError(f"fill_caches: context {context} > the KV cache's max_len {cache.max_len}")
        T = context if cache.max_len is None else cache.max_len
        cache.k = torch.randn(batch, cache.k.shape[1], T, cache.k.shape[3])
        cache.v = torch.randn(batch, cache.v.shape[1], T, cache.v.shape[3])
        cache.length = context

    def _qkv(self, x: torch.Tensor, start: int):
        """Projected, rotated q "b h l d" and k, v "b hk l d" for positions start .. start+l-1."""
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, l, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, l, self.n_kv_heads, self.head_dim)
        pos = torch.arange(start, start + l, device=x.device)
        cos, sin = rope_cos_sin(pos, self.head_dim, self.rope_theta,
                                dtype=torch.promote_types(x.dtype, torch.float32))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _attend(self, q, k, v, offset: int, pad=None) -> torch.Tensor:
        """Softmax attention of l queries at positions offset.. over offset+l keys (causal; with
        pad "b", padding keys masked for real queries)."""
        lq, lk = q.shape[2], k.shape[2]
        if lq == 1 and pad is None and q.dtype in DECODE_DTYPES:  # decoding: sees every cached key
            return decode_attention(q, k, v, self.head_dim ** -0.5)
        r = self.n_heads // self.n_kv_heads
        if r > 1:
            k = k.repeat_interleave(r, dim=1)
            v = v.repeat_interleave(r, dim=1)
        if pad is not None:
            i = torch.arange(lq, device=q.device)[:, None] + offset
            causal = torch.arange(lk, device=q.device)[None, :] <= i
            mask = causal[None] & key_padding_mask(pad, offset, lq, lk)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        if offset == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if lq == 1:
            return F.scaled_dot_product_attention(q, k, v)
        i = torch.arange(lq, device=q.device)[:, None] + offset
        mask = torch.arange(lk, device=q.device)[None, :] <= i
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pad=None) -> torch.Tensor:
        """x "b l d_model" -> "b l d_model"; with a cache, attend to its tokens too and append.

        pad: None or "b" left-padding counts (with a cache: at its first forward, then kept in it):
        real queries do not see padding keys, so each row equals the row alone (RoPE is relative).

        L = 0 or b = 0 give an empty output; NaN/Inf in q, k or v is a ValueError (switched off by
        `transmamba.ops.validate.CHECK_FINITE = False`)."""
        check_tensor("x", x, 3, "(b, l, d_model)")
        check_dim("x", x, -1, self.d_model, "d_model")
        b, l, _ = x.shape
        if cache is not None and cache.batch != b:
            raise ValueError(f"cache has batch {cache.batch}, x has batch {b} (shape {tuple(x.shape)})")
        if l == 0:
            return x.new_zeros(b, 0, self.d_model)
        start = 0 if cache is None else cache.length
        pad = check_pad(pad, b)
        if cache is not None:
            if pad is not None:
                if start > 0 and not (cache.pad is not None and torch.equal(pad, cache.pad)):
                    raise ValueError("pad (left padding) can only be given with a cache's first forward")
                cache.pad = pad
            pad = cache.pad
        q, k, v = self._qkv(x, start)
        check_all_finite(q=q, k=k, v=v)
        if cache is not None:
            k, v = cache.append(k, v)
        o = self._attend(q, k.to(q.dtype), v.to(q.dtype), start, pad)
        return self.o_proj(o.transpose(1, 2).reshape(b, l, self.n_heads * self.head_dim))

    def step(self, x_t: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token x_t "b d_model" -> "b d_model" at position cache.length; appends to the cache."""
        check_tensor("x_t", x_t, 2, "(b, d_model)")
        check_dim("x_t", x_t, -1, self.d_model, "d_model")
        if cache is None:
            raise ValueError("step needs a KVCache (see allocate_cache)")
        return self.forward(x_t[:, None], cache)[:, 0]
