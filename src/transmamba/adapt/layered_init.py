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

The paper gives no n. The sweep n in {0, L/4, L/2, L} (ViM, Fashion-MNIST 25%, one epoch; see
docs/helpers/vision_results.md) gave 75.9 / 76.9 / 79.9 +- 0.2 / 80.0 +- 0.9 % top-1: L/2 and L tie
and both clearly beat 0 and L/4; the default takes L/2 (same mean, a quarter of the spread).
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.adapt.subclone import (attention_to_ssm, cut_linear, cut_mlp, cut_norm, fill_,
                                       head_dims, norm_cut_scale, qk_dims_for_state, rank_heads,
                                       top_k_indices, weight_importance)
from transmamba.models.teachers import ViT
from transmamba.models.vision import VideoMamba, VisionMamba, ViM

DEFAULT_INIT_FRACTION = 0.5  # n = round(fraction * depth); chosen from the n sweep


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


def transfer_layer(tblk, sblk, i: int, idx: torch.Tensor, stats: dict, num_heads: int) -> list[str]:
    """Teacher block -> student block (norm1, attention -> mixer, norm2 + MLP). See module docstring."""
    mixer = sblk.mixer
    D_t = tblk.norm1.weight.numel()
    e = D_t // num_heads
    done = []
    s1 = _copy_norm(sblk.norm1, tblk.norm1, idx, stats["norm_inputs"].get(f"blocks.{i}.norm1"), D_t)
    done.append(f"norm1(x{s1:.3f})")
    head_order = rank_heads(stats["heads"][i])
    n_v_heads = max(1, min(num_heads, mixer.d_inner // e))
    v_idx = head_dims(torch.sort(head_order[:n_v_heads]).values, e)
    a = tblk.attn
    di, r, n = mixer.d_inner, mixer.dt_rank, mixer.d_state
    v_ch = torch.arange(v_idx.numel())
    ssm = None
    for k in range(mixer.n_orders):
        qk_idx = qk_dims_for_state(stats["qk"][i], head_order, n, start=k)
        ssm = attention_to_ssm(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                               in_idx=idx, v_idx=v_idx, qk_idx=qk_idx, b_v=a.v_proj.bias,
                               b_o=a.o_proj.bias)
        with torch.no_grad():
            mixer.x_proj_weight[k, r:r + 2 * n].zero_()  # B, C read only the V channels
        fill_(mixer.x_proj_weight[k], ssm.B_weight, rows=torch.arange(r, r + n), cols=v_ch)
        fill_(mixer.x_proj_weight[k], ssm.C_weight, rows=torch.arange(r + n, r + 2 * n), cols=v_ch)
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
    done.append(f"mixer(V heads {head_order[:n_v_heads].tolist()} -> {v_idx.numel()}/{di} channels)")
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
                            stats: dict | None = None, calib: torch.Tensor | None = None) -> dict:
    """Subclone the teacher's embeddings/head and its first n_layers into the student, in place.

    stats: `ViT.calibration_stats` output; else computed from `calib` images (or clips: their frames);
    else weight-norm importances (`weight_norm_stats`). Returns {"resid_idx", "copied"}."""
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
    for i in range(n_layers):
        copied += [f"blocks.{i}." + c for c in
                   transfer_layer(teacher.blocks[i], student.blocks[i], i, idx, stats, tc.num_heads)]
    return {"resid_idx": idx, "copied": copied}
