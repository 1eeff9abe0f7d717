"""Layered initialisation: fill a vision Mamba student from a ViT teacher by selective subcloning.

    transfer_vit_to_student(teacher, student, n_layers, stats)

copies, cut to the student's widths with `transmamba.adapt.subclone`:
    always      patch embedding (2D, or inflated to the VideoMamba tubelet: W3[:, :, j] = W2 / t),
                class token, position embeddings (remapped to the student's token layout),
                the final norm, the classifier head (when the class counts match)
    layer i<n   norm1; attention -> mixer (V -> x rows, O -> out_proj columns, K/Q -> B/C of each
                scan branch k, from the k-th most important head; identity convs), norm2 + MLP
    layer i>=n  untouched: the student's own init
n = 0 is "subcloning only" (embeddings and head); n = depth is every layer. Student layer i takes
teacher layer i. One ranking of the residual dims (the student's d_model of the teacher's) is used
everywhere; heads, Q/K dims and MLP neurons are ranked per layer.

Mixer init (`mixer_init`, per copied layer; MIXER_INITS):
    "mapped"   as above: the scan's state takes q.k (B = W_K x-dims, C = W_Q x-dims through
               pinv(W_x)); gate z, dt, A, D stay at the student's own init. This starts near
               chance: the linear, un-normalised q.k kernel anti-correlates with softmax mixing.
    "mean"     the scan starts as a (decaying) mean of V in every branch, the gate is open:
    "mean_qk"  "mean" on state dim 0, the mapped q.k (of n - 1 Q/K dims) on state dims 1..n-1.
  For "mean"/"mean_qk", with j the first inner channel without a V row (if every channel holds V,
  the least important V head is dropped to free some), l tokens, K branches, merge weight
  m = 1/K ("mean") or 1 ("sum"), Z1 the root of silu(Z1) = 1:
    constant channel   in_proj row j = 0 (bias 0), conv taps of j = 0, conv bias_j = Z1
                       => x_k[:, s, j] = silu(Z1) = 1 for every token s and branch k
    state dim 0        B_k[:, s, 0] = C_k[:, s, 0] = x_k[:, s, j] = 1   (x_proj rows r, r + n)
                       A_k[:, 0] = -a0                                  (A_log[k, :, 0] = log a0)
    dt                 dt_proj_weight = 0, dt_proj_bias = softplus^-1(delta), delta = 2 / (m K l)
    skip               D = -m K delta / 2 = -1 / l
    gate               in_proj z rows = 0, z bias = Z1 => silu(z) = 1 (needs student.bias; without
                       a bias the gate stays at its own init)
  so that, on every V channel c (x = silu(V) after the identity conv), branch k in its scan order
    y_k[s] = delta sum_{s' <= s} exp(-a0 delta (s - s')) x_k[s'] + D x_k[s]      (+ q.k terms)
  and, for orders that come in reverse pairs (all four students: forward/backward, rows/cols and
  their reverses), with a0 -> 0 the merged output is exactly the mean over tokens:
    y[t] = m sum_k y_k[pos_k(t)] = m delta (K / 2)(sum_s x[s] + x[t]) + m K D x[t] = mean_s x[s].
  The conv's silu bends V (x = silu(V) after the identity conv); lin_scale s > 0 straightens it:
    V conv tap = 1 / s, and out_proj's V columns (and the kept q.k B/C rows' V columns) times 2 s,
    so the scan reads 2 s silu(V / s) = V + V^2 / (2 s) + O(V^4 / s^3) -> V as s grows.
  a0 = 1 (the student's own A_0) gives a decaying mean (weight exp(-2 d / (m K l)) at scan
  distance d). `mean_mixer_ref` computes this y directly from the mixer's weights.

The paper gives no n. The sweep n in {0, L/4, L/2, L} (ViM, Fashion-MNIST 25%, one epoch; see
docs/results.md, "the n sweep") gave 75.9 / 76.9 / 79.9 +- 0.2 / 80.0 +- 0.9 % top-1: L/2 and L tie
and both clearly beat 0 and L/4; the default takes L/2 (same mean, a quarter of the spread).
With the least-squares calibration of the copied blocks (`adapt/block_calibration.py`) n = L beat
n = L/2 (ViM, 50% data: 85.1 vs 84.7), so the Fashion-MNIST configs set init.layers = L.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.adapt.subclone import (attention_to_ssm, cut_linear, cut_mlp, cut_norm, fill_,
                                       head_dims, norm_cut_scale, qk_dims_for_state, rank_heads,
                                       top_k_indices, weight_importance)
from transmamba.models.vit import ViT
from transmamba.models.vision import VideoMamba, VisionMamba, ViM

DEFAULT_INIT_FRACTION = 0.5  # n = round(fraction * depth); chosen from the n sweep
MIXER_INITS = ("mapped", "mean", "mean_qk")
SILU_ONE = 1.2784645427610738  # Z1: silu(Z1) = Z1 * sigmoid(Z1) = 1


def default_init_layers(depth: int) -> int:
    """n for the layered initialisation of a `depth`-layer student."""
    return int(round(DEFAULT_INIT_FRACTION * depth))


def weight_norm_stats(teacher: ViT) -> dict:
    """Importance from weight norms (fallback when no calibration batch is given):
    resid_j  = sum ||W_writer[j, :]|| + sum ||W_reader[:, j]|| over patch embed, Q/K/V/O, fc1/fc2
    heads_h  = ||W_V[head h]||_F * ||W_O[:, head h]||_F
    qk_{h,e} = ||W_Q[h e, :]|| * ||W_K[h e, :]||
    neurons_f = ||fc1[f, :]|| * ||fc2[:, f]||"""
    cfg = teacher.cfg
    H, e = cfg.num_heads, cfg.d_model // cfg.num_heads
    writers = [teacher.patch_embed.weight.flatten(1)]
    readers = []
    heads, qk, neurons = [], [], []
    for blk in teacher.blocks:
        a, m = blk.attn, blk.mlp
        writers += [a.o_proj.weight, m.fc2.weight]
        readers += [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, m.fc1.weight]
        wv = a.v_proj.weight.detach().unflatten(0, (H, e))
        wo = a.o_proj.weight.detach().unflatten(1, (H, e))
        heads.append(wv.flatten(1).norm(dim=1) * wo.transpose(0, 1).flatten(1).norm(dim=1))
        qk.append((a.q_proj.weight.detach().norm(dim=1) * a.k_proj.weight.detach().norm(dim=1)).view(H, e))
        neurons.append(m.fc1.weight.detach().norm(dim=1) * m.fc2.weight.detach().norm(dim=0))
    return {"resid": weight_importance(writers, readers), "heads": torch.stack(heads),
            "qk": torch.stack(qk), "neurons": torch.stack(neurons), "norm_inputs": {}}


def _norm_kind(norm: nn.Module) -> str:
    return "layer" if isinstance(norm, nn.LayerNorm) else "rms"


def _copy_norm(dst: nn.Module, src: nn.LayerNorm, idx, x_calib, d_full: int) -> float:
    """dst.weight = src.weight[idx] * s (s from `norm_cut_scale`), dst.bias = src.bias[idx] if any."""
    if idx.numel() == d_full:
        s = 1.0
    else:
        s = norm_cut_scale(x_calib, idx, _norm_kind(dst), d_full=d_full)
    g, b = cut_norm(src.weight, src.bias, idx, s)
    fill_(dst.weight, g)
    if getattr(dst, "bias", None) is not None and b is not None:
        fill_(dst.bias, b)
    return s


def _copy_embeddings(teacher: ViT, student: VisionMamba, idx: torch.Tensor, stats: dict) -> list[str]:
    tc, sc = teacher.cfg, student.cfg
    done = []
    if tc.patch_size != sc.patch_size or tc.img_size != sc.img_size or tc.in_chans != sc.in_chans:
        raise ValueError(f"teacher (img {tc.img_size}, patch {tc.patch_size}, chans {tc.in_chans}) and "
                         f"student (img {sc.img_size}, patch {sc.patch_size}, chans {sc.in_chans}) "
                         "must share image size, patch size and channels to transfer embeddings")
    w = teacher.patch_embed.weight.detach().index_select(0, idx)
    b = teacher.patch_embed.bias.detach().index_select(0, idx)
    if isinstance(student, VideoMamba):
        t = sc.tubelet
        w = w[:, :, None].expand(-1, -1, t, -1, -1) / t  # inflation: a static clip embeds as a frame
    fill_(student.patch_embed.weight, w)
    fill_(student.patch_embed.bias, b)
    done.append("patch_embed")
    np_ = teacher.n_prefix
    pos = teacher.pos_embed.detach().index_select(2, idx)  # "1 (p + n) S"
    if hasattr(student, "cls_token"):
        fill_(student.cls_token, teacher.cls_token.detach().index_select(2, idx))
        done.append("cls_token")
    if hasattr(student, "pos_embed"):
        if isinstance(student, VideoMamba):
            src = torch.cat([pos[:, :1], pos[:, np_:]], dim=1)
            with torch.no_grad():
                student.temporal_pos.zero_()
            done.append("temporal_pos(zeroed)")
        elif isinstance(student, ViM):
            src = pos.index_select(1, student.teacher_index(np_))
        else:
            src = pos[:, np_:]
        fill_(student.pos_embed, src)
        done.append("pos_embed")
    s = _copy_norm(student.norm_f, teacher.norm, idx, stats["norm_inputs"].get("norm"), tc.d_model)
    done.append(f"norm_f(x{s:.3f})")
    if isinstance(teacher.head, nn.Linear) and teacher.head.out_features == student.head.out_features:
        hw, hb = cut_linear(teacher.head.weight, teacher.head.bias, None, idx)
        fill_(student.head.weight, hw)
        fill_(student.head.bias, hb)
        done.append("head")
    return done


def _identity_conv_(mixer) -> None:
    """Make every branch's conv the identity (last causal tap / centre tap = 1, others 0, no bias)."""
    with torch.no_grad():
        if mixer.conv == "1d":
            mixer.conv_weight.zero_()
            mixer.conv_weight[..., -1] = 1.0
            if mixer.conv_bias is not None:
                mixer.conv_bias.zero_()
        else:
            w = mixer.conv2d.weight
            w.zero_()
            c = w.shape[-1] // 2
            w[..., c, c] = 1.0
            if mixer.conv2d.bias is not None:
                mixer.conv2d.bias.zero_()


def check_mixer_init(mixer_init: str, a0: float = 1.0, lin_scale: float = 0.0) -> None:
    """ValueError unless mixer_init is one of MIXER_INITS and a0, lin_scale >= 0 are finite."""
    if mixer_init not in MIXER_INITS:
        raise ValueError(f"mixer_init must be one of {MIXER_INITS}, got {mixer_init!r}")
    if not (a0 >= 0 and math.isfinite(a0)):
        raise ValueError(f"mean_decay (a0) must be a finite number >= 0, got {a0!r}")
    if not (lin_scale >= 0 and math.isfinite(lin_scale)):
        raise ValueError(f"lin_scale must be a finite number >= 0, got {lin_scale!r}")


def merge_weight(mixer) -> float:
    """m, the weight of each branch in the merge y = m sum_k y_k: 1/K for "mean", 1 for "sum"."""
    return 1.0 / mixer.n_orders if mixer.merge == "mean" else 1.0


def mean_scan_constants(mixer) -> tuple[float, float]:
    """(delta, D) of the mean init: delta = 2 / (m K l), D = -m K delta / 2 = -1 / l (module docstring)."""
    K, l, m = mixer.n_orders, mixer.length, merge_weight(mixer)
    delta = 2.0 / (m * K * l)
    return delta, -m * K * delta / 2


@torch.no_grad()
def init_mean_mixer_(mixer, j: int, n_qk: int, a0: float = 1.0, lin_scale: float = 0.0) -> list[str]:
    """Make state dim 0 of every branch a (decaying) mean of x and open the gate, in place (module
    docstring, "mean"). j: the constant (spare) inner channel; the V channels are 0..j-1; n_qk: how
    many state dims (the last ones, 1..n-1) keep the q.k B/C already written into x_proj (0: none).
    lin_scale s > 0 linearises the conv's silu on the V channels (module docstring)."""
    di, r, n = mixer.d_inner, mixer.dt_rank, mixer.d_state
    check_mixer_init("mean", a0, lin_scale)
    if not 0 <= j < di:
        raise ValueError(f"constant channel j={j} must be in [0, d_inner={di})")
    if not 0 <= n_qk < n:
        raise ValueError(f"n_qk={n_qk} must be in [0, d_state - 1 = {n - 1}]")
    conv_bias = mixer.conv_bias if mixer.conv == "1d" else mixer.conv2d.bias
    if conv_bias is None:
        raise ValueError("the mean mixer init needs a conv bias (MultiScanMamba conv_bias=True)")
    delta, D = mean_scan_constants(mixer)
    mixer.in_proj.weight[j] = 0.0
    if mixer.in_proj.bias is not None:
        mixer.in_proj.bias[j] = 0.0
    if mixer.conv == "1d":
        mixer.conv_weight[:, j] = 0.0
        conv_bias[:, j] = SILU_ONE
    else:
        mixer.conv2d.weight[j] = 0.0
        conv_bias[j] = SILU_ONE
    B_rows, C_rows = slice(r, r + n - n_qk), slice(r + n, r + 2 * n - n_qk)
    mixer.x_proj_weight[:, B_rows] = 0.0  # q.k kept only on the last n_qk state dims
    mixer.x_proj_weight[:, C_rows] = 0.0
    mixer.x_proj_weight[:, r, j] = 1.0
    mixer.x_proj_weight[:, r + n, j] = 1.0
    if mixer.dir_embed is not None:
        mixer.dir_embed[:, 0] = 0.0  # PlainMamba: B_0 stays exactly 1
    mixer.A_log[:, :, 0] = math.log(a0) if a0 > 0 else -30.0
    mixer.dt_proj_weight.zero_()
    mixer.dt_proj_bias.fill_(math.log(math.expm1(delta)))
    mixer.D.fill_(D)
    if lin_scale > 0:  # x = silu(V / s), read back times 2 s: 2 s silu(V / s) = V + V^2 / (2 s) + ...
        if mixer.conv == "1d":
            mixer.conv_weight[:, :j] /= lin_scale
        else:
            mixer.conv2d.weight[:j] /= lin_scale
        mixer.out_proj.weight[:, :j] *= 2 * lin_scale
        if n_qk:
            mixer.x_proj_weight[:, r + n - n_qk:r + n, :j] *= 2 * lin_scale
            mixer.x_proj_weight[:, r + 2 * n - n_qk:, :j] *= 2 * lin_scale
    done = [f"mean scan (channel {j}, delta {delta:.4f}, D {D:.4f}, a0 {a0:g}, q.k dims {n_qk}, "
            f"lin_scale {lin_scale:g})"]
    if mixer.in_proj.bias is not None:
        mixer.in_proj.weight[di:] = 0.0
        mixer.in_proj.bias[di:] = SILU_ONE
        done.append("gate open")
    else:
        done.append("gate at init (no bias)")
    return done


def mean_mixer_ref(mixer, u: torch.Tensor, v_ch: torch.Tensor) -> torch.Tensor:
    """Reference output of a mixer after `init_mean_mixer_` with no q.k dims, from the equations
    (module docstring), not from the scan: per branch k the explicit kernel
        W_k[t, t'] = delta exp(-a0 delta (s - s')) [s' <= s] + D [t == t'],  s = pos_k(t), s' = pos_k(t')
    y = m sum_k W_k x,  x = silu(conv(in_proj(u)))[..., v_ch],  out = out_proj[:, v_ch] y (+ bias).
    u "b l d_model" -> "b l d_model". Needs the gate open (silu(z) = 1)."""
    x = mixer.in_proj(u)[..., :mixer.d_inner]
    if mixer.conv == "2d":
        x = mixer._conv2d(x)[..., v_ch]
    else:  # identity conv: only the last causal tap, plus the bias
        w = mixer.conv_weight[:, v_ch]
        b = 0 if mixer.conv_bias is None else mixer.conv_bias[:, v_ch]
        xs = [F.silu(x[..., v_ch] * w[k, :, -1] + (b[k] if torch.is_tensor(b) else b))
              for k in range(mixer.n_orders)]
    K, l, m = mixer.n_orders, mixer.length, merge_weight(mixer)
    y = 0
    for k in range(K):
        xk = x if mixer.conv == "2d" else xs[k]
        delta = F.softplus(mixer.dt_proj_bias[k, v_ch])  # "c"
        a0 = torch.exp(mixer.A_log[k, v_ch, 0])
        pos = mixer.invs[k]  # token t sits at scan position pos[t]
        dist = (pos[:, None] - pos[None, :]).to(x.dtype)  # "t t'": s - s'
        causal = (dist >= 0).to(x.dtype)
        W = delta * torch.exp(-a0 * delta * dist.clamp_min(0)[..., None]) * causal[..., None]
        W = W + torch.eye(l, dtype=x.dtype)[..., None] * mixer.D[k, v_ch]  # "t t' c"
        y = y + m * torch.einsum("tsc,bsc->btc", W, xk)
    out = y @ mixer.out_proj.weight[:, v_ch].t()
    return out if mixer.out_proj.bias is None else out + mixer.out_proj.bias


def n_v_heads(mixer, num_heads: int, d_head: int, mixer_init: str) -> int:
    """Teacher heads whose V a copied mixer holds: as many whole heads as d_inner fits, one fewer
    when a mean init needs a spare channel and none is left."""
    n = max(1, min(num_heads, mixer.d_inner // d_head))
    if mixer_init != "mapped" and n * d_head >= mixer.d_inner:
        if n == 1:
            raise ValueError(f"mixer_init={mixer_init!r} needs a spare inner channel: d_inner="
                             f"{mixer.d_inner} holds only one teacher head of {d_head} dims")
        n -= 1  # free channels for the constant state channel
    return n


def free_channels(mixer, num_heads: int, d_head: int, mixer_init: str) -> torch.Tensor:
    """Inner channels that carry nothing after `transfer_layer`: after the V channels and, for the
    mean inits, the constant channel (their out_proj columns are 0)."""
    used = n_v_heads(mixer, num_heads, d_head, mixer_init) * d_head + (mixer_init != "mapped")
    return torch.arange(used, mixer.d_inner)


def transfer_layer(tblk, sblk, i: int, idx: torch.Tensor, stats: dict, num_heads: int,
                   mixer_init: str = "mapped", mean_decay: float = 1.0,
                   lin_scale: float = 0.0) -> list[str]:
    """Teacher block -> student block (norm1, attention -> mixer, norm2 + MLP). See module docstring."""
    check_mixer_init(mixer_init, mean_decay, lin_scale)
    mixer = sblk.mixer
    D_t = tblk.norm1.weight.numel()
    e = D_t // num_heads
    done = []
    s1 = _copy_norm(sblk.norm1, tblk.norm1, idx, stats["norm_inputs"].get(f"blocks.{i}.norm1"), D_t)
    done.append(f"norm1(x{s1:.3f})")
    head_order = rank_heads(stats["heads"][i])
    n_v = n_v_heads(mixer, num_heads, e, mixer_init)
    n_qk = {"mapped": mixer.d_state, "mean": 0, "mean_qk": mixer.d_state - 1}[mixer_init]
    v_idx = head_dims(torch.sort(head_order[:n_v]).values, e)
    a = tblk.attn
    di, r, n = mixer.d_inner, mixer.dt_rank, mixer.d_state
    v_ch = torch.arange(v_idx.numel())
    ssm = None
    for k in range(mixer.n_orders):
        qk_idx = qk_dims_for_state(stats["qk"][i], head_order, n_qk, start=k)
        ssm = attention_to_ssm(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                               in_idx=idx, v_idx=v_idx, qk_idx=qk_idx, b_v=a.v_proj.bias,
                               b_o=a.o_proj.bias)
        with torch.no_grad():
            mixer.x_proj_weight[k, r:r + 2 * n].zero_()  # B, C read only the V channels
        if n_qk:  # q.k on the last n_qk state dims
            fill_(mixer.x_proj_weight[k], ssm.B_weight, rows=torch.arange(r + n - n_qk, r + n), cols=v_ch)
            fill_(mixer.x_proj_weight[k], ssm.C_weight, rows=torch.arange(r + 2 * n - n_qk, r + 2 * n),
                  cols=v_ch)
    fill_(mixer.in_proj.weight, ssm.x_weight, rows=v_ch)
    if mixer.in_proj.bias is not None and ssm.x_bias is not None:
        with torch.no_grad():
            mixer.in_proj.bias[v_ch] = ssm.x_bias
    with torch.no_grad():
        mixer.out_proj.weight.zero_()  # channels without a V row start silent
    fill_(mixer.out_proj.weight, ssm.out_weight, cols=v_ch)
    if mixer.out_proj.bias is not None and ssm.out_bias is not None:
        fill_(mixer.out_proj.bias, ssm.out_bias)
    _identity_conv_(mixer)
    done.append(f"mixer(V heads {head_order[:n_v].tolist()} -> {v_idx.numel()}/{di} channels)")
    if mixer_init != "mapped":
        done += init_mean_mixer_(mixer, v_idx.numel(), n_qk, mean_decay, lin_scale)
    if sblk.mlp is not None:
        s2 = _copy_norm(sblk.norm2, tblk.norm2, idx, stats["norm_inputs"].get(f"blocks.{i}.norm2"), D_t)
        F_s, F_t = sblk.mlp.fc1.out_features, tblk.mlp.fc1.out_features
        k_n = min(F_s, F_t)
        neurons = top_k_indices(stats["neurons"][i], k_n)
        m = tblk.mlp
        (w1, b1), (w2, b2) = cut_mlp(m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias,
                                     in_idx=idx, neuron_idx=neurons)
        slots = torch.arange(k_n)
        fill_(sblk.mlp.fc1.weight, w1, rows=slots)
        fill_(sblk.mlp.fc1.bias, b1, rows=slots)
        with torch.no_grad():
            sblk.mlp.fc2.weight.zero_()
        fill_(sblk.mlp.fc2.weight, w2, cols=slots)
        fill_(sblk.mlp.fc2.bias, b2)
        done.append(f"norm2(x{s2:.3f}) mlp({k_n}/{F_s} neurons)")
    return done


@torch.no_grad()
def transfer_vit_to_student(teacher: ViT, student: VisionMamba, n_layers: int,
                            stats: dict | None = None, calib: torch.Tensor | None = None,
                            mixer_init: str = "mapped", mean_decay: float = 1.0,
                            lin_scale: float = 0.0) -> dict:
    """Subclone the teacher's embeddings/head and its first n_layers into the student, in place.

    mixer_init: "mapped" | "mean" | "mean_qk" (module docstring); mean_decay: a0, the decay rate
    of the mean's state dim (1: the student's own A_0 = -1, a decaying mean; 0: the exact mean);
    lin_scale: s > 0 linearises the silu after the conv on V ("mean"/"mean_qk" only; 0 = off).
    stats: `ViT.calibration_stats` output; else computed from `calib` images (or clips: their frames);
    else weight-norm importances (`weight_norm_stats`). Returns {"resid_idx", "copied",
    "free_channels"} (per copied layer, the inner channels that carry nothing: `free_channels`)."""
    check_mixer_init(mixer_init, mean_decay, lin_scale)
    tc, sc = teacher.cfg, student.cfg
    if sc.d_model > tc.d_model:
        raise ValueError(f"student d_model={sc.d_model} exceeds the teacher's {tc.d_model}")
    if not 0 <= n_layers <= min(sc.depth, tc.depth):
        raise ValueError(f"n_layers={n_layers} must be in [0, min(student depth {sc.depth}, "
                         f"teacher depth {tc.depth})]")
    if stats is None:
        if calib is not None:
            frames = calib.flatten(0, 1) if calib.dim() == 5 else calib
            stats = teacher.calibration_stats(frames)
        else:
            stats = weight_norm_stats(teacher)
    idx = top_k_indices(stats["resid"], sc.d_model)
    copied = _copy_embeddings(teacher, student, idx, stats)
    free = []
    for i in range(n_layers):
        copied += [f"blocks.{i}." + c for c in
                   transfer_layer(teacher.blocks[i], student.blocks[i], i, idx, stats, tc.num_heads,
                                  mixer_init, mean_decay, lin_scale)]
        free.append(free_channels(student.blocks[i].mixer, tc.num_heads, tc.d_model // tc.num_heads,
                                  mixer_init))
    return {"resid_idx": idx, "copied": copied, "free_channels": free}
