"""TransMamba-Switch mixer: one set of projections, attention before the TransPoint, SSD after.

Li et al. 2025 ("TransMamba: Flexibly Switching between Transformer and Mamba"). One projection
serves both mechanisms:

    attention's  Q, K, V   ==   the SSM's  C, B, x

    positions t <  P :  y_t = softmax(q_t K_{<=t}^T / sqrt(n)) V_{<=t}              (causal attention)
    positions t >= P :  state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T,  y_t = state_t C_t
                        y_t <- gated_rmsnorm(y_t, z_t)                              (SSD scan)

The scan at P starts from state_{P-1} = memory_convert(K_{<P}, V_{<P}, dt_{<P}, A): the exact SSM
state the prefix would have produced (see `transmamba.ops.memory_converter`), so outputs at t >= P
equal those of a pure SSM layer with the same weights, and outputs at t < P equal a pure attention
layer's. Q/K/V pass through the short causal conv (and its activation) on both paths; the z gate
acts on the SSM path only; RoPE (optional, for converting RoPE teachers) acts on attention only.

Options for converting other Transformer families (`transmamba.teachers.families`), each on the
path(s) where the math puts it:
    bias / out_bias   biases of the q, k, v (and z, dt) rows of in_proj / of out_proj: both paths
                      (C, B, x are the biased q, k, v)
    qk_norm           RMSNorm of q and k after the conv, "head" (one weight "n" per head, Qwen3,
                      Gemma 3) or "full" (over the whole projection, OLMo 2): both paths (C, B are
                      the normed q, k)
    rope_inv_freq, rope_attention_factor   a scaled RoPE's table (attention only, like RoPE)
    sliding_window    attention sees keys t - W < s <= t: attention only. The SSM state carries the
                      whole prefix, so from P on the window no longer applies.
    attn_scale        the softmax temperature (default head_dim^-1/2): attention only (a constant
                      scale of C only rescales y, which the gated RMSNorm removes)
    attn_softcap      logits <- cap * tanh(logits / cap) before the softmax: attention only

Heads: q/C has n_heads (h) heads of dim n = head_dim; k/B and v/x have n_kv_heads (g) heads
(grouped-query attention); on the SSM path x is expanded to every head and head i reads B group
i // (h / g). dt, A_log (and D, off by default as in the paper) are per head.

Decoding (`step`): before P the cache is a KV cache (RoPE'd keys, values and dt); when generation
reaches P the converter turns it into the SSM state "b h p n" and the KV cache is freed, so memory
stops growing past P.

Head-level TransPoints (`transmamba.modules.head_transpoints`): P may be given per KV head (a
`HeadTransPoints` of n_kv_heads ints, or an int64 tensor "b g"). KV head j with its query heads
attends before P_j and runs the SSM from P_j, its state at P_j converted from its own prefix K, V,
dt. The heads are grouped by equal P and each group is gathered and run on its own (a kept group,
P beyond the sequence, costs only its own attention), then scattered back before out_proj; the
cache holds one sub-cache per group, so a group's K/V is freed when its heads cross. Heads that all
agree run the layer-wide code (bit for bit the int / per-row result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from transmamba.modules.cache import SwitchCache
from transmamba.modules.head_transpoints import (HeadTransPoints, check_head_transpoints, collapse, head_groups,
                                                 is_head_level, same_transpoint)
from transmamba.modules.registry import register_mixer
from transmamba.modules.ssm_mixer import A_from_log, sample_dt_bias
from transmamba.ops.conv1d import causal_conv1d, causal_conv1d_step
from transmamba.ops.decode_attention import DECODE_DTYPES, decode_attention
from transmamba.ops.memory_converter import memory_convert
from transmamba.ops.norm import gated_rms_norm, rms_norm
from transmamba.ops.padding import check_pad, key_padding_mask, padded_positions
from transmamba.ops.rope import apply_rope, rope_cos_sin
from transmamba.ops.ssd import ssd_chunked, ssd_step
from transmamba.ops.validate import check_all_finite, check_dim, check_tensor, check_transpoint
from transmamba.modules.schedule import ATTENTION_ONLY


@dataclass
class SwitchConfig:
    d_model: int
    n_heads: int  # h: query heads = SSM heads
    n_kv_heads: int | None = None  # g: key/value heads = B groups (None: n_heads)
    head_dim: int = 64  # n (q/k dim = SSM state size) = p (v dim = SSM head dim)
    d_conv: int = 4
    conv_activation: str | None = "silu"  # None: the identity (lossless conversion of a Transformer)
    conv_init_identity: bool = False
    rope: bool = False
    rope_theta: float = 10000.0
    chunk_size: int = 64
    use_D: bool = False
    bias: bool = False  # in_proj bias (and out_proj's unless out_bias says otherwise)
    out_bias: bool | None = None  # None: same as bias
    qk_norm: str | None = None  # None | "head" | "full": RMSNorm of q and k (both paths)
    rope_inv_freq: list[float] | None = None  # a scaled RoPE's inverse frequencies (None: theta^(-2j/n))
    rope_attention_factor: float = 1.0  # multiplies RoPE's cos and sin (yarn)
    sliding_window: int | None = None  # attention path only: keys within the last W positions
    attn_scale: float | None = None  # attention logits scale (None: head_dim^-1/2)
    attn_softcap: float | None = None  # attention logits <- cap * tanh(logits / cap)
    gate_bias: bool = False  # z = W_z u + b_z: lets a converted layer start with the gate open (silu(b_z) = 1)
    norm_eps: float = 1e-5
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_range: tuple[float, float] = (1.0, 16.0)
    transpoint: int = ATTENTION_ONLY  # used when forward() is given none

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.qk_norm not in (None, "head", "full"):
            raise ValueError(f"qk_norm must be None, 'head' or 'full', got {self.qk_norm!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.attn_softcap is not None and self.attn_softcap <= 0:
            raise ValueError(f"attn_softcap must be > 0 or None, got {self.attn_softcap}")


@register_mixer("transmamba", takes_transpoint=True)
class SwitchMixer(nn.Module):
    cache_cls = SwitchCache

    def __init__(self, cfg: SwitchConfig, *, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        h, g, n = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.h, self.g, self.n, self.p = h, g, n, n
        self.d_qkv = h * n + g * n + g * n  # conv channels: q | k | v
        fk = dict(device=device, dtype=dtype)
        # in_proj -> [z (h*p) | q=C (h*n) | k=B (g*n) | v=x (g*p) | dt (h)]
        self.in_proj = nn.Linear(cfg.d_model, h * n + self.d_qkv + h, bias=cfg.bias, **fk)
        self.z_bias = nn.Parameter(torch.zeros(h * n, **fk)) if cfg.gate_bias else None
        self.conv_weight = nn.Parameter(torch.empty(self.d_qkv, cfg.d_conv, **fk))
        self.conv_bias = nn.Parameter(torch.zeros(self.d_qkv, **fk))
        self.dt_bias = nn.Parameter(torch.empty(h, **fk))
        self.A_log = nn.Parameter(torch.empty(h, **fk))
        self.D = nn.Parameter(torch.ones(h, **fk)) if cfg.use_D else None
        self.norm_weight = nn.Parameter(torch.ones(h * n, **fk))
        self.out_proj = nn.Linear(h * n, cfg.d_model, bias=cfg.bias if cfg.out_bias is None else cfg.out_bias, **fk)
        if cfg.qk_norm:  # RMSNorm weights of q and k ("head": per head dim, shared by heads)
            self.q_norm_weight = nn.Parameter(torch.ones(n if cfg.qk_norm == "head" else h * n, **fk))
            self.k_norm_weight = nn.Parameter(torch.ones(n if cfg.qk_norm == "head" else g * n, **fk))
        self.reset_ssm_parameters()

    @classmethod
    def from_lm_config(cls, cfg, layer: int | None = None) -> "SwitchMixer":
        """The Switch mixer of LM layer `layer` (`transmamba.models.lm.LMConfig`): the shared shape
        fields, switch_rope -> rope, switch_gate_bias -> gate_bias, then `switch_options` and this
        layer's `switch_layer_options` entry (layer None: none) override them."""
        kw = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                  d_conv=cfg.d_conv, conv_activation=cfg.conv_activation,
                  conv_init_identity=cfg.conv_init_identity, rope=cfg.switch_rope, rope_theta=cfg.rope_theta,
                  chunk_size=cfg.chunk_size, norm_eps=cfg.norm_eps, gate_bias=cfg.switch_gate_bias)
        kw.update(cfg.switch_options)
        if cfg.switch_layer_options and layer is not None:
            kw.update(cfg.switch_layer_options[layer])
        return cls(SwitchConfig(**kw))

    @torch.no_grad()
    def reset_ssm_parameters(self):
        cfg = self.cfg
        if cfg.conv_init_identity:
            self.conv_weight.zero_()
            self.conv_weight[:, -1] = 1.0  # the newest input passes through unchanged
        else:
            bound = 1 / math.sqrt(cfg.d_conv)
            self.conv_weight.uniform_(-bound, bound)
        self.conv_bias.zero_()
        self.dt_bias.copy_(sample_dt_bias(self.h, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.A_log.copy_(torch.log(torch.empty(self.h).uniform_(*cfg.A_init_range)))

    # ------------------------------------------------------------------------------ pieces
    def project(self, u):
        """u "... d" -> z "... (h p)", qkv "... c" (pre-conv), dt_raw "... h"."""
        zqkvdt = self.in_proj(u)
        z, qkv, dt_raw = torch.split(zqkvdt, [self.h * self.p, self.d_qkv, self.h], dim=-1)
        return (z if self.z_bias is None else z + self.z_bias), qkv, dt_raw

    def split_qkv(self, qkv):
        """conv output "... c" -> q "... h n" (= C), k "... g n" (= B), v "... g p" (= x); q, k
        RMS-normed with qk_norm."""
        q, k, v = torch.split(qkv, [self.h * self.n, self.g * self.n, self.g * self.p], dim=-1)
        if self.cfg.qk_norm == "full":
            q, k = rms_norm(q, self.q_norm_weight, self.cfg.norm_eps), rms_norm(k, self.k_norm_weight, self.cfg.norm_eps)
        q, k, v = q.unflatten(-1, (self.h, self.n)), k.unflatten(-1, (self.g, self.n)), v.unflatten(-1, (self.g, self.p))
        if self.cfg.qk_norm == "head":
            q, k = rms_norm(q, self.q_norm_weight, self.cfg.norm_eps), rms_norm(k, self.k_norm_weight, self.cfg.norm_eps)
        return q, k, v

    def _rope(self, t, positions, inverse=False):
        cfg = self.cfg
        if not cfg.rope:
            return t
        f = cfg.rope_attention_factor
        cos, sin = rope_cos_sin(positions, self.n, cfg.rope_theta, dtype=t.dtype, inv_freq=cfg.rope_inv_freq,
                                scale=f if not inverse else 1.0 / f)  # (f R)^-1 = R^T / f
        return apply_rope(t, cos, -sin if inverse else sin)

    def _dt_A(self, dt_raw):
        return F.softplus(dt_raw + self.dt_bias), A_from_log(self.A_log)

    def expand_heads(self, t):
        """"b l g d" -> "b l h d": grouped heads repeated for every query head."""
        r = self.h // self.g
        return t if r == 1 else t.repeat_interleave(r, dim=2)

    def _attend(self, q, k, v, q_pos0: int, pad=None):
        """Causal softmax attention. q "b s h n" at positions q_pos0.., k/v "b T g *" at 0..T-1
        (within the sliding window, scaled by attn_scale, soft-capped by attn_softcap if set;
        padding keys, pad "b" left-padding counts, masked for real queries)."""
        cfg = self.cfg
        s, T = q.shape[1], k.shape[1]
        qh, kh, vh = (rearrange(t, "b l h d -> b h l d") for t in (q, k, v))
        W = cfg.sliding_window
        mask = None
        # no mask where causality is one: the square prefill, or one query at the newest key (decoding)
        plain = (q_pos0 == 0 and s == T) or (s == 1 and q_pos0 == T - 1)
        if not plain or (W is not None and W < T) or cfg.attn_softcap is not None:
            qi = torch.arange(q_pos0, q_pos0 + s, device=q.device)[:, None]
            ki = torch.arange(T, device=q.device)[None, :]
            mask = ki <= qi
            if W is not None:
                mask = mask & (ki > qi - W)
        if pad is not None:
            pm = key_padding_mask(pad, q_pos0, s, T)
            base = mask if mask is not None else (torch.arange(T, device=q.device)[None, :]
                                                  <= torch.arange(q_pos0, q_pos0 + s, device=q.device)[:, None])
            mask = (base[None] & pm)[:, None]  # "b 1 s T"
        if cfg.attn_softcap is not None:
            r = self.h // self.g
            kh, vh = kh.repeat_interleave(r, 1), vh.repeat_interleave(r, 1)
            scale = cfg.attn_scale if cfg.attn_scale is not None else self.n ** -0.5
            logits = (qh @ kh.transpose(-1, -2)) * scale
            logits = torch.tanh(logits / cfg.attn_softcap) * cfg.attn_softcap
            logits = logits.masked_fill(~mask, float("-inf"))
            o = logits.softmax(-1, dtype=torch.promote_types(qh.dtype, torch.float32)).to(qh.dtype) @ vh
        elif mask is None and s == 1 and qh.dtype in DECODE_DTYPES:  # one decoding query
            o = decode_attention(qh, kh, vh, cfg.attn_scale if cfg.attn_scale is not None else self.n ** -0.5)
        elif mask is None:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=s > 1, scale=cfg.attn_scale,
                                               enable_gqa=self.g != self.h)
        else:
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=cfg.attn_scale,
                                               enable_gqa=self.g != self.h)
        return rearrange(o, "b h l d -> b l h d")

    def _gate_out(self, y, z, norm_weight=None):
        """SSM output "b l h p" through the gated RMSNorm (one group per kv head; norm_weight: that
        of these heads, None: every head's)."""
        y = gated_rms_norm(y.flatten(-2), z, self.norm_weight if norm_weight is None else norm_weight,
                           group_size=self.h * self.p // self.g, eps=self.cfg.norm_eps)
        return y

    # ------------------------------------------------------------------------------ forward
    def forward(self, u, transpoint=None, cache: SwitchCache | None = None, pad=None):
        """u "b l d" -> "b l d".

        transpoint: an int >= 0, or an integer tensor "b" of entries >= 0 (one P per row; with a
        cache, the cache's own), or per KV head a `HeadTransPoints` (n_kv_heads ints) or an integer
        tensor "b g" (one per row and KV head), or None for the layer's scheduled `cfg.transpoint`
        (or the cache's); anything else is a ValueError. pad: None or "b" left-padding counts (with a cache, given at
        its first forward and kept in it): padded positions contribute nothing (conv inputs and
        x = v zeroed, keys masked), so each row equals the row alone with its TransPoint shifted by
        its padding (the caller shifts it). With a cache, u continues after the cache's `pos` tokens and the cache is
        updated in place (prefill or chunked decoding). L = 0 or b = 0 give an empty output.
        NaN/Inf in q, k, v (= C, B, x) or dt is a ValueError (`transmamba.ops.validate.CHECK_FINITE`).
        """
        check_tensor("u", u, 3, "(b, l, d_model)")
        check_dim("u", u, 2, self.cfg.d_model, "d_model")
        b, L, _ = u.shape
        if cache is not None and cache.batch != b:
            raise ValueError(f"cache has batch {cache.batch}, u has batch {b} (shape {tuple(u.shape)})")
        pos0 = cache.pos if cache is not None else 0
        P = self._resolve_transpoint(transpoint, cache, b)
        pad = self._resolve_pad(pad, cache, b)
        if L == 0:
            return u.new_zeros(b, 0, self.cfg.d_model)
        z, qkv, dt_raw = self.project(u)
        is_pad = None if pad is None else padded_positions(pad, pos0, L)
        if is_pad is not None:
            qkv = qkv.masked_fill(is_pad[..., None], 0)
        if cache is not None:
            qkv, cache.conv_state = causal_conv1d(qkv, self.conv_weight, self.conv_bias,
                                                  initial_state=cache.conv_state, return_final_state=True,
                                                  activation=self.cfg.conv_activation)
        else:
            qkv = causal_conv1d(qkv, self.conv_weight, self.conv_bias, activation=self.cfg.conv_activation)
        q, k, v = self.split_qkv(qkv)
        if is_pad is not None:
            v = v.masked_fill(is_pad[..., None, None], 0)
        dt, A = self._dt_A(dt_raw)
        self._check_finite(q, k, v, dt)
        if is_head_level(P):  # KV heads with different TransPoints: each group of heads on its own
            y = self._mix_heads(q, k, v, dt, A, z, P, cache, pos0, pad)
        else:
            y = self._mix(q, k, v, dt, A, z, P, cache, pos0, pad, self.D, self.norm_weight)
        if cache is not None:
            cache.pos = pos0 + L
        return self.out_proj(y)

    def _mix(self, q, k, v, dt, A, z, P, cache, pos0, pad, D, norm_weight):
        """The layer (or a group of its KV heads, with their query heads) at TransPoint P (an int or
        a per-row tensor "b"): q "b L h n", k/v "b L g *", dt "b L h", A "h", z "b L (h p)", D "h" |
        None, norm_weight "(h p)" of those heads -> y "b L (h p)" before out_proj. With a cache (of
        those heads), its KV cache / SSM state is read and updated (not its pos)."""
        b, L = q.shape[0], q.shape[1]
        if isinstance(P, torch.Tensor) and b == 0:
            s_lo = s_hi = 0
        elif isinstance(P, torch.Tensor):  # one TransPoint per row: both paths over the overlap
            s_lo, s_hi = int((P.min() - pos0).clamp(0, L)), int((P.max() - pos0).clamp(0, L))
        else:
            s_lo = s_hi = min(max(P - pos0, 0), L)
        pieces = []
        if s_hi > 0:  # attention on local positions [0, s_hi)
            positions = torch.arange(pos0, pos0 + s_hi, device=q.device)
            k_att = self._rope(k[:, :s_hi], positions)
            q_att = self._rope(q[:, :s_hi], positions)
            K, V = k_att, v[:, :s_hi]
            if cache is not None and pos0 > 0:
                K = torch.cat([cache.k[:, :pos0], K], 1)
                V = torch.cat([cache.v[:, :pos0], V], 1)
            y_att = self._attend(q_att, K, V, pos0, pad)
            if cache is not None and s_hi == L:  # the chunk ends before (a row's) P: keep the KV cache
                self._cache_append(cache, k_att, v, dt)
            pieces.append(y_att.flatten(-2))
        if s_lo < L:  # SSM on local positions [s_lo, L), from the exact state at pos0 + s_lo
            state = self._state_at_switch(cache, k, v, dt, A, s_lo, pos0)
            y_ssm = ssd_chunked(self.expand_heads(v[:, s_lo:]), dt[:, s_lo:], A, self.expand_heads(k[:, s_lo:]),
                                q[:, s_lo:], chunk_size=self.cfg.chunk_size, D=D,
                                initial_state=state, return_final_state=cache is not None)
            if cache is not None:
                y_ssm, cache.ssm_state = y_ssm
                if s_hi < L:  # past every row's TransPoint the KV cache is freed
                    cache.k = cache.v = cache.dt = None
            pieces.append(self._gate_out(y_ssm, z[:, s_lo:], norm_weight))

        if isinstance(P, torch.Tensor) and s_lo < s_hi:  # per-row choice on the overlap
            y_att, y_ssm = pieces
            t = torch.arange(pos0, pos0 + L, device=q.device)
            use_att = t[None, :] < P[:, None]  # "b l"
            y_att = F.pad(y_att, (0, 0, 0, L - s_hi))
            y_ssm = F.pad(y_ssm, (0, 0, s_lo, 0))
            y = torch.where(use_att[..., None], y_att, y_ssm)
        else:
            y = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        return y

    # ------------------------------------------------------------------------------ head-level TransPoints
    def _head_parts(self, P, cache):
        """[(kv_heads, P_group, sub-cache or None)]: the groups of KV heads of equal TransPoint."""
        if cache is not None:
            return [(c.heads, c.transpoint, c) for c in cache.groups]
        return [(heads, pg, None) for heads, pg in head_groups(P)]

    def _query_heads(self, kv_heads) -> list[int]:
        """The query (= SSM) heads of these KV heads: head i reads KV head i // (h / g)."""
        r = self.h // self.g
        return [j * r + i for j in kv_heads for i in range(r)]

    @staticmethod
    def _take(t, dim: int, idx: list[int]):
        """t's entries `idx` along dim: a view when they are a contiguous range, else a gather."""
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return t if len(idx) == t.shape[dim] else t.narrow(dim, idx[0], len(idx))
        return t.index_select(dim, torch.tensor(idx, device=t.device))

    def _head_params(self, A, qh: list[int]):
        """A, D, norm_weight of the query heads qh."""
        D = None if self.D is None else self._take(self.D, 0, qh)
        return self._take(A, 0, qh), D, self._take(self.norm_weight.view(self.h, self.p), 0, qh).flatten()

    def _scatter_heads(self, ys: list, order: list[int]):
        """Per-group outputs "b l h_g p" (heads `order`) -> "b l (h p)" in head order."""
        y = torch.cat(ys, 2) if len(ys) > 1 else ys[0]
        if order != list(range(self.h)):
            inv = [0] * self.h
            for i, hd in enumerate(order):
                inv[hd] = i
            y = y.index_select(2, torch.tensor(inv, device=y.device))
        return y.flatten(-2)

    def _mix_heads(self, q, k, v, dt, A, z, P, cache, pos0, pad):
        """Head-level TransPoints: each group of KV heads of equal P (with its query heads) gathered
        and run on its own (`_mix`: attention before its P, the SSM from its P with the state the
        Memory converter makes of that group's prefix), then scattered back into head order."""
        ys, order = [], []
        zh = z.unflatten(-1, (self.h, self.p))
        for heads, pg, sub in self._head_parts(P, cache):
            kv, qh = list(heads), self._query_heads(heads)
            A_g, D_g, w_g = self._head_params(A, qh)
            y = self._mix(self._take(q, 2, qh), self._take(k, 2, kv), self._take(v, 2, kv), self._take(dt, 2, qh),
                          A_g, self._take(zh, 2, qh).flatten(-2), pg, sub, pos0, pad, D_g, w_g)
            if sub is not None:
                sub.pos = pos0 + q.shape[1]
            ys.append(y.unflatten(-1, (len(qh), self.p)))
            order += qh
        return self._scatter_heads(ys, order)

    @staticmethod
    def _check_finite(q, k, v, dt) -> None:
        check_all_finite(**{"q (= C)": q, "k (= B, K)": k, "v (= x, V)": v, "dt": dt})

    def _resolve_transpoint(self, transpoint, cache, b):
        """The TransPoint of this call: an int >= 0, an int64 tensor "b" (checked, see
        `check_transpoint`), or per KV head (a HeadTransPoints or an int64 tensor "b g", heads not
        all equal); None gives the cache's (or `cfg.transpoint` without a cache)."""
        if transpoint is None:
            return cache.transpoint if cache is not None else self.cfg.transpoint
        P = self._check_transpoint(transpoint, b)
        if cache is not None and not same_transpoint(P, cache.transpoint):
            raise ValueError(f"transpoint={P} differs from the cache's transpoint={cache.transpoint}")
        return P

    def _check_transpoint(self, transpoint, b):
        """`check_transpoint`, or a per-head P (a HeadTransPoints of n_kv_heads entries or an
        integer tensor "b g", `check_head_transpoints`) with every head equal collapsed to the
        layer-wide int / per-row tensor (so it runs exactly the layer-wide code)."""
        if isinstance(transpoint, HeadTransPoints) or (isinstance(transpoint, torch.Tensor) and transpoint.dim() == 2):
            return collapse(check_head_transpoints(transpoint, b, self.g))
        return check_transpoint(transpoint, b)

    @staticmethod
    def _resolve_pad(pad, cache, b):
        """The left padding of this call: given with the cache's first forward, kept in the cache."""
        pad = check_pad(pad, b)
        if cache is None:
            return pad
        if pad is not None:
            if cache.pos > 0 and not (cache.pad is not None and torch.equal(pad, cache.pad)):
                raise ValueError("pad (left padding) can only be given with a cache's first forward")
            cache.pad = pad
        return cache.pad

    def _state_at_switch(self, cache, k, v, dt, A, s, pos0):
        """The SSM state just before local position s (absolute pos0 + s): the Memory converter."""
        if cache is not None and cache.ssm_state is not None:
            return cache.ssm_state  # already past the TransPoint
        K, V, DT = k[:, :s], v[:, :s], dt[:, :s]
        if cache is not None and pos0 > 0:  # prefix tokens live in the KV cache
            k_prev = self._rope(cache.k[:, :pos0], torch.arange(pos0, device=k.device), inverse=True)
            K = torch.cat([k_prev, K], 1)
            V = torch.cat([cache.v[:, :pos0], V], 1)
            DT = torch.cat([cache.dt[:, :pos0], DT], 1)
        if K.shape[1] == 0:
            return None
        return memory_convert(self.expand_heads(K), self.expand_heads(V), DT, A, chunk_size=self.cfg.chunk_size)

    # ------------------------------------------------------------------------------ decoding
    def allocate_cache(self, batch: int, max_len: int | None = None, *, device=None, dtype=None,
                       transpoint: int | torch.Tensor | None = None, pad=None) -> SwitchCache:
        """Empty cache: conv state "b c (d_conv-1)" and, with max_len, KV buffers preallocated to
        min(max_len, TransPoint) tokens (None: they grow by doubling). transpoint: an int >= 0, an
        integer tensor "b" (one per row: both paths run while rows differ), per KV head (a
        HeadTransPoints or a tensor "b g": one sub-cache per group of heads of equal P, each with
        buffers up to its own P), or None for the layer's `cfg.transpoint`; pad: "b" left padding
        of the prompt (or give it to the first forward);
        device and dtype default to in_proj's."""
        w = self.in_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        P = self.cfg.transpoint if transpoint is None else self._check_transpoint(transpoint, batch)
        if is_head_level(P):  # one sub-cache per group of KV heads of equal P (the conv state stays here)
            cache = SwitchCache(conv_state=torch.zeros(batch, self.d_qkv, self.cfg.d_conv - 1, device=device,
                                                       dtype=dtype),
                                transpoint=P.to(device) if isinstance(P, torch.Tensor) else P,
                                pad=None if pad is None else check_pad(pad, batch).to(device))
            cache.groups = []
            for heads, pg in head_groups(P):
                sub = SwitchCache(conv_state=torch.zeros(batch, 0, self.cfg.d_conv - 1, device=device, dtype=dtype),
                                  transpoint=pg.to(device) if isinstance(pg, torch.Tensor) else pg, heads=heads)
                self._kv_buffers(sub, batch, max_len, len(heads), device, dtype)
                cache.groups.append(sub)
            return cache
        cache = SwitchCache(conv_state=torch.zeros(batch, self.d_qkv, self.cfg.d_conv - 1, device=device, dtype=dtype),
                            transpoint=P.to(device) if isinstance(P, torch.Tensor) else P,
                            pad=None if pad is None else check_pad(pad, batch).to(device))
        self._kv_buffers(cache, batch, max_len, self.g, device, dtype)
        return cache

    def _kv_buffers(self, cache: SwitchCache, batch: int, max_len, g: int, device, dtype) -> None:
        """KV buffers of g KV heads (and their query heads' dt) preallocated to min(max_len, the
        cache's largest TransPoint) tokens (none without max_len: they grow by doubling)."""
        cap = min(max_len, cache.max_transpoint) if max_len else 0
        if cap:
            cache.k = torch.empty(batch, cap, g, self.n, device=device, dtype=dtype)
            cache.v = torch.empty(batch, cap, g, self.p, device=device, dtype=dtype)
            cache.dt = torch.empty(batch, cap, g * (self.h // self.g), device=device, dtype=dtype)

    def fill_cache(self, cache: SwitchCache, context: int, batch: int = 1) -> None:
        """Make `cache` look as if `context` tokens had been consumed by `batch` rows: an SSM state
        if context reaches the TransPoint (KV cache freed), else `context` KV entries (at least the
        capacity allocate_cache gave, as a real prefill keeps it). Random contents. With head-level
        TransPoints each group of KV heads does so at its own TransPoint."""
        for sub in cache.groups if cache.groups is not None else [cache]:
            g = self.g if sub.heads is None else len(sub.heads)
            h = g * (self.h // self.g)
            if context >= sub.max_transpoint:
                sub.ssm_state = torch.randn(batch, h, self.p, self.n)
                sub.k = sub.v = sub.dt = None
            else:  # keep the capacity allocate_caches gave (max_len), as a real prefill does
                T = max(context, 0 if sub.k is None else sub.k.shape[1])
                sub.k, sub.v = torch.randn(batch, T, g, self.n), torch.randn(batch, T, g, self.p)
                sub.dt = torch.rand(batch, T, h)
            sub.pos = context
        cache.pos = context

    @staticmethod
    def _cache_append(cache: SwitchCache, k, v, dt):
        """Write new k/v/dt "b s *" at [pos, pos+s), growing capacity by doubling."""
        s, pos = k.shape[1], cache.pos
        need = pos + s
        if cache.k is None or cache.k.shape[1] < need:
            cap = max(need, 2 * (cache.k.shape[1] if cache.k is not None else 0), 16)
            cap = min(cap, max(cache.max_transpoint, need))
            grow = lambda old, new: (torch.cat([old[:, :pos], new.new_empty(new.shape[0], cap - pos, *new.shape[2:])], 1)  # noqa: E731
                                     if old is not None else new.new_empty(new.shape[0], cap, *new.shape[2:]))
            cache.k, cache.v, cache.dt = grow(cache.k, k), grow(cache.v, v), grow(cache.dt, dt)
        cache.k[:, pos:need] = k
        cache.v[:, pos:need] = v
        cache.dt[:, pos:need] = dt

    def step(self, u_t, cache: SwitchCache):
        """One token u_t "b d" -> "b d"; attention while pos < P, the SSM from P on.

        u_t and the cache are checked here; the conv and SSD step ops get arguments this layer built
        itself (dt = softplus(.) >= 0, A = -exp(A_log) < 0, shapes from its own projections), so their
        argument checks are skipped (`check=False`); q, k, v, dt are checked for NaN/Inf as in forward."""
        check_tensor("u_t", u_t, 2, "(b, d_model)")
        check_dim("u_t", u_t, 1, self.cfg.d_model, "d_model")
        if not isinstance(cache, SwitchCache) or cache.batch != u_t.shape[0]:
            raise ValueError(f"cache must be a SwitchCache with batch {u_t.shape[0]} (see allocate_cache), "
                             f"got {type(cache).__name__}")
        z, qkv, dt_raw = self.project(u_t)
        qkv, cache.conv_state = causal_conv1d_step(cache.conv_state, qkv, self.conv_weight, self.conv_bias,
                                                   self.cfg.conv_activation, check=False)
        q, k, v = self.split_qkv(qkv[:, None])
        dt, A = self._dt_A(dt_raw[:, None])
        self._check_finite(q, k, v, dt)
        state_dtype = torch.promote_types(u_t.dtype, torch.float32)
        pos = cache.pos
        if cache.groups is None:
            y = self._step_mix(q, k, v, dt, A, z, cache, cache.pad, self.D, self.norm_weight, state_dtype)
        else:  # head-level TransPoints: each group of KV heads on its own (see _mix_heads)
            ys, order = [], []
            zh = z.unflatten(-1, (self.h, self.p))
            for heads, _, sub in self._head_parts(None, cache):
                kv, qh = list(heads), self._query_heads(heads)
                A_g, D_g, w_g = self._head_params(A, qh)
                y = self._step_mix(self._take(q, 2, qh), self._take(k, 2, kv), self._take(v, 2, kv),
                                   self._take(dt, 2, qh), A_g, self._take(zh, 1, qh).flatten(-2), sub, cache.pad,
                                   D_g, w_g, state_dtype)
                sub.pos = pos + 1
                ys.append(y.unflatten(-1, (len(qh), self.p)))
                order += qh
            y = self._scatter_heads([t[:, None] for t in ys], order)[:, 0]
        cache.pos = pos + 1
        return self.out_proj(y)

    def _step_mix(self, q, k, v, dt, A, z, cache, pad, D, norm_weight, state_dtype):
        """One decoding step of the layer (or of a group of its KV heads with their query heads, and
        that group's cache): q "b 1 h n", k/v "b 1 g *", dt "b 1 h", z "b (h p)" -> y "b (h p)"
        before out_proj; the cache's KV cache / SSM state updated (not its pos)."""
        pos = cache.pos
        P = cache.transpoint
        y_ssm = y_att = None
        if pos >= cache.min_transpoint:  # the SSM (for every row past its P)
            if cache.ssm_state is None:  # crossing the (first) TransPoint: convert the KV cache
                cache.ssm_state = self._state_at_switch(cache, k[:, :0], v[:, :0], dt[:, :0], A, 0, pos)
                if cache.ssm_state is None:
                    cache.ssm_state = torch.zeros(q.shape[0], dt.shape[-1], self.p, self.n, device=q.device,
                                                  dtype=state_dtype)
            y_ssm, cache.ssm_state = ssd_step(cache.ssm_state, self.expand_heads(v)[:, 0], dt[:, 0], A,
                                              self.expand_heads(k)[:, 0], q[:, 0], D=D, check=False)
            y_ssm = self._gate_out(y_ssm[:, None], z[:, None], norm_weight)[:, 0]
        if pos < cache.max_transpoint:  # attention over the KV cache (for every row before its P)
            pos_t = torch.tensor([pos], device=q.device)
            k_att = self._rope(k, pos_t)
            self._cache_append(cache, k_att, v, dt)
            y_att = self._attend(self._rope(q, pos_t), cache.k[:, :pos + 1], cache.v[:, :pos + 1], pos, pad)
            y_att = y_att[:, 0].flatten(-2)
        if y_att is None:
            y = y_ssm
        elif y_ssm is None:
            y = y_att
        else:  # rows on both sides of their TransPoints
            y = torch.where((pos < P)[:, None], y_att, y_ssm)
        if cache.ssm_state is not None and cache.max_transpoint <= pos + 1:
            cache.k = cache.v = cache.dt = None  # every row is past its TransPoint: free the KV cache
        return y
