"""Selective weight subcloning: cut a teacher's linear weights to a smaller student, keeping the most
important dimensions. Generic over "a teacher's linear weights + an importance ranking", so the
same functions serve a ViT teacher (here) and a Llama teacher (the LM conversion).

Importance (larger = keep):
    activation_importance(a)        I_j = mean_{all other axes} |a_j|            (calibration batch)
    weight_importance(W_out, W_in)  I_j = sum ||W_out[:, j]||_2 + sum ||W_in[j, :]||_2   (fallback)
One ranking of the residual dims is shared by every layer (the residual stream is one space).

Cutting (W is "out in", as in nn.Linear):
    cut_linear(W, b, out_idx, in_idx)  W' = W[out_idx][:, in_idx] * scale,  b' = b[out_idx]
    cut_norm(g, b, idx, scale)         g' = g[idx] * scale,  b' = b[idx]
    norm_cut_scale(x, idx)             s  = mean_tokens rms_S(x) / rms_D(x)   (RMSNorm)
                                            mean_tokens std_S(x) / std_D(x)   (LayerNorm)
A norm over the kept dims S divides by rms_S instead of the teacher's rms_D; multiplying its gain
by s restores the teacher's scale on the kept dims on average. Without calibration data
s = sqrt(D / |S|) (the kept dims carrying all the energy).

Attention -> selective SSM (Mamba-1 mixer: x = W_x h, B = W_B conv(x), C = W_C conv(x), out = W_out y):
    x rows   <- V rows of the kept heads              W_x[v] = W_V[heads][:, S]
    out cols <- O cols of the same heads              W_out[:, v] = W_O[S][:, heads]
    B, C     <- K, Q dims of one head, through x:     W_B[:, v] = W_K[qk][:, S] pinv(W_x[v]),
                                                      W_C[:, v] = W_Q[qk][:, S] pinv(W_x[v])
With an identity conv and u = x, B = W_B x = W_K h exactly when W_x[v] has full column rank
(the pseudo-inverse undoes the x projection), so the SSM's B, C, x start as the attention's K, Q, V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from transmamba.ops.validate import check_dim, check_tensor


def activation_importance(acts: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """I_j = mean over every axis but `dim` of |acts_j|: "... j ..." -> "j"."""
    if not isinstance(acts, torch.Tensor) or acts.dim() < 1:
        raise ValueError(f"acts must be a tensor with at least one axis, got {type(acts).__name__}")
    a = acts.abs().movedim(dim, -1)
    return a.reshape(-1, a.shape[-1]).mean(0)


def weight_importance(writers: list[torch.Tensor] = (), readers: list[torch.Tensor] = ()) -> torch.Tensor:
    """Weight-norm fallback for one space of size D:
    I_j = sum_{W in writers} ||W[j, :]||_2 + sum_{W in readers} ||W[:, j]||_2
    (writers "D in" produce the space, e.g. W_O, fc2 for the residual; readers "out D" consume it)."""
    terms = [w.detach().norm(dim=1) for w in writers] + [w.detach().norm(dim=0) for w in readers]
    if not terms:
        raise ValueError("weight_importance needs at least one writer or reader weight")
    sizes = {t.numel() for t in terms}
    if len(sizes) != 1:
        raise ValueError(f"writers/readers disagree on the space size: {sorted(sizes)}")
    return torch.stack(terms).sum(0)


def top_k_indices(importance: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of a 1-D importance vector, sorted ascending (so the kept
    dims stay in the teacher's order); ties broken by the lower index."""
    check_tensor("importance", importance, 1, "(n,)")
    n = importance.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be in [0, {n}] (importance has {n} entries)")
    order = sorted(range(n), key=lambda j: (-float(importance[j]), j))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def head_dims(heads: torch.Tensor, d_head: int) -> torch.Tensor:
    """Flat feature indices of whole heads: [h * d_head + e for h in heads for e in range(d_head)]."""
    heads = torch.as_tensor(heads, dtype=torch.long)
    return (heads[:, None] * d_head + torch.arange(d_head)[None]).reshape(-1)


def rank_heads(head_importance: torch.Tensor) -> torch.Tensor:
    """Heads sorted by decreasing importance (ties: lower index first)."""
    check_tensor("head_importance", head_importance, 1, "(h,)")
    return torch.tensor(sorted(range(head_importance.numel()),
                               key=lambda j: (-float(head_importance[j]), j)), dtype=torch.long)


def cut_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, out_idx=None, in_idx=None,
               scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W' = W[out_idx][:, in_idx] * scale, b' = b[out_idx] (None index = keep all)."""
    check_tensor("weight", weight, 2, "(out, in)")
    w = weight.detach()
    if out_idx is not None:
        w = w.index_select(0, torch.as_tensor(out_idx, dtype=torch.long))
    if in_idx is not None:
        w = w.index_select(1, torch.as_tensor(in_idx, dtype=torch.long))
    b = None
    if bias is not None:
        check_dim("bias", bias, 0, weight.shape[0], "weight rows")
        b = bias.detach() if out_idx is None else bias.detach().index_select(0, torch.as_tensor(out_idx))
    return w * scale, b


def norm_cut_scale(x: torch.Tensor | None, idx: torch.Tensor, kind: str = "layer",
                   d_full: int | None = None) -> float:
    """Gain multiplier for a norm cut from D dims to the dims `idx` ("S").

    RMSNorm:   s = mean_tokens sqrt(mean_S x^2) / sqrt(mean_D x^2)
    LayerNorm: s = mean_tokens std_S(x) / std_D(x)
    x "tokens D" are the norm's inputs on a calibration batch; with x None, s = sqrt(D / |S|)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    if kind not in ("layer", "rms"):
        raise ValueError(f"kind must be 'layer' or 'rms', got {kind!r}")
    if x is None:
        if d_full is None:
            raise ValueError("norm_cut_scale needs x or d_full")
        return math.sqrt(d_full / max(1, idx.numel()))
    x = x.detach().reshape(-1, x.shape[-1]).double()
    xs = x.index_select(1, idx)
    if kind == "rms":
        num, den = xs.pow(2).mean(1).sqrt(), x.pow(2).mean(1).sqrt()
    else:
        num, den = xs.std(1, unbiased=False), x.std(1, unbiased=False)
    return float((num / den.clamp_min(1e-12)).mean())


def cut_norm(weight: torch.Tensor, bias: torch.Tensor | None, idx, scale: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """g' = g[idx] * scale, b' = b[idx] (the shift is not rescaled)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    g = weight.detach().index_select(0, idx) * scale
    return g, None if bias is None else bias.detach().index_select(0, idx)


def fill_(param: torch.Tensor, value: torch.Tensor, rows=None, cols=None) -> None:
    """param[rows][:, cols] = value in place (None = all), under no_grad; shapes are checked."""
    with torch.no_grad():
        r = slice(None) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        if param.dim() == 1 or cols is None:
            target_shape = param[r].shape
            if tuple(value.shape) != tuple(target_shape):
                raise ValueError(f"value has shape {tuple(value.shape)}, target slice {tuple(target_shape)}")
            param[r] = value.to(param.dtype)
            return
        c = torch.as_tensor(cols, dtype=torch.long)
        rr = torch.arange(param.shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        if tuple(value.shape) != (rr.numel(), c.numel()):
            raise ValueError(f"value has shape {tuple(value.shape)}, target slice {(rr.numel(), c.numel())}")
        param[rr[:, None], c[None, :]] = value.to(param.dtype)


@dataclass
class SSMFromAttention:
    """Student mixer weights built from one attention layer (see the module docstring).

    x_weight "v S", x_bias "v" | None: rows of in_proj's x half (channels v_channels);
    B_weight, C_weight "n v": columns v_channels of x_proj's B and C rows;
    out_weight "S v", out_bias "S" | None: columns v_channels of out_proj.
    """

    v_channels: torch.Tensor
    x_weight: torch.Tensor
    x_bias: torch.Tensor | None
    B_weight: torch.Tensor
    C_weight: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None


def attention_to_ssm(W_q, W_k, W_v, W_o, *, in_idx, v_idx, qk_idx, b_v=None, b_o=None,
                     rcond: float = 1e-6) -> SSMFromAttention:
    """Map attention Q, K, V, O (each "D_t D_t", out x in) to an SSM's C, B, x and output projection.

    in_idx "S": kept residual dims; v_idx "v": kept V/O feature dims (whole heads); qk_idx "n":
    the Q/K feature dims that become the state's B, C. Equations:
        W_x = W_V[v_idx][:, in_idx]                    b_x = b_V[v_idx]
        W_B = W_K[qk_idx][:, in_idx] pinv(W_x)         W_C = W_Q[qk_idx][:, in_idx] pinv(W_x)
        W_out = W_O[in_idx][:, v_idx]                  b_out = b_O[in_idx]
    so W_B W_x = W_K[qk_idx][:, in_idx] when W_x has full column rank (|v| >= |S|)."""
    for name, w in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v), ("W_o", W_o)):
        check_tensor(name, w, 2, "(D_out, D_in)")
    W_x, b_x = cut_linear(W_v, b_v, v_idx, in_idx)
    pinv = torch.linalg.pinv(W_x.double(), rtol=rcond).to(W_x.dtype)  # "S v"
    W_B = cut_linear(W_k, None, qk_idx, in_idx)[0] @ pinv
    W_C = cut_linear(W_q, None, qk_idx, in_idx)[0] @ pinv
    W_out, b_out = cut_linear(W_o, b_o, in_idx, v_idx)
    return SSMFromAttention(torch.as_tensor(v_idx, dtype=torch.long), W_x, b_x, W_B, W_C, W_out, b_out)


def cut_mlp(W_1, b_1, W_2, b_2, *, in_idx, neuron_idx):
    """fc1' = W_1[neurons][:, S], b_1[neurons];  fc2' = W_2[S][:, neurons], b_2[S]."""
    fc1 = cut_linear(W_1, b_1, neuron_idx, in_idx)
    fc2 = cut_linear(W_2, b_2, in_idx, neuron_idx)
    return fc1, fc2


def qk_dims_for_state(qk_importance: torch.Tensor, head_order: torch.Tensor, d_state: int,
                      start: int = 0) -> torch.Tensor:
    """The d_state Q/K feature dims that feed one SSM branch's B and C: the most important dims of
    head head_order[start], continuing into the next heads (cyclically) if d_state > d_head.
    qk_importance "H e" (e.g. mean|q_e| * mean|k_e| per head). Returns flat dims "n"."""
    check_tensor("qk_importance", qk_importance, 2, "(h, d_head)")
    H, e = qk_importance.shape
    if d_state > H * e:
        raise ValueError(f"d_state={d_state} exceeds the teacher's Q/K width {H * e}")
    out, j = [], start
    while len(out) < d_state:
        h = int(head_order[j % H])
        take = min(e, d_state - len(out))
        out.extend((h * e + top_k_indices(qk_importance[h], take)).tolist())
        j += 1
    return torch.tensor(out, dtype=torch.long)
