"""Least-squares refit of each copied student block's output projection against its teacher block.

Subcloning gives a copied student block the teacher's norm, V and O, but the block cannot hold all
that the teacher block computes: ViM and PlainMamba blocks have no MLP (half of each teacher
block) and the scan is not softmax attention. What is linear in the student block can still be fit
in closed form: the mixer's out_proj. Layer by layer, on calibration images, on the student's own
residual stream u_i (so an early layer's error is corrected by the next one):

    g_i      = y * silu(z) of mixer i on norm1(u_i), the input of out_proj       "N d_inner"
    target_i = h_{i+1}[idx] - u_i     student block without MLP: the whole teacher block i
             = m_i[idx] - u_i         student block with MLP: the teacher's state after attention
    (W, b)   = argmin_{W, b} ||g_i W^T + b - target_i||^2 + lam ||W||^2,  lam = ridge * mean diag(g^T g)

h_{i+1} is teacher block i's output, m_i its state after attention (before the MLP), idx the
student's residual dims of the teacher's, and N runs over images x tokens, the teacher's tokens put
into the student's layout (`VisionMamba.align_teacher_tokens`). The bias is not penalised. A
student block with an MLP then applies its (copied) MLP to the refit stream.

A block without an MLP can host the teacher MLP's most important neurons in the mixer's free inner
channels F (no V row, not the constant channel; `layered_init.free_channels`), passed through the
scan's per-token skip D, before out_proj is fit (mlp_channels):

    a_i          = fc1(norm2(m_i)) of teacher block i at its |F| neurons with the largest mean |gelu|
    (W_F, b_F)   = argmin ||norm1(u_i) W^T + b - a_i||^2 + lam ||W||^2      (in_proj rows F, bias F)
    in_proj[F]   = 1.702 (W_F, b_F),  D[:, F] = 1 / (m K)  (m = 1/K for a mean merge, 1 for a sum)
so that channel c in F carries silu(1.702 a) ~ 1.702 gelu(a) at every token (plus the scan's mean
and q.k terms), features the out_proj fit can then use like the teacher's fc2 does.

`calibrate_head_` does the same for the classifier, against the teacher's logits:
    (W_head, b_head) = argmin ||pool(norm_f(h_L^student)) W^T + b - logits^teacher||^2 + lam ||W||^2
"""

from __future__ import annotations

import torch

from transmamba.adapt.layered_init import merge_weight
from transmamba.models.vit import ViT
from transmamba.models.vision import VisionMamba


def fit_linear(g: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3,
               bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W "d_out d_in", b "d_out") minimising ||g W^T + b - target||^2 + lam ||W||^2, with
    lam = ridge * mean_j (g^T g)_jj; g "N d_in", target "N d_out". Solved in float64 on centred
    data (the bias is not penalised): W^T = (gc^T gc + lam I)^-1 gc^T tc, b = mean(t) - W mean(g).
    bias=False: b = 0 and no centring (returns b None)."""
    if g.dim() != 2 or target.dim() != 2 or g.shape[0] != target.shape[0]:
        raise ValueError(f"fit_linear wants g (N, d_in) and target (N, d_out), got {tuple(g.shape)} "
                         f"and {tuple(target.shape)}")
    if not (torch.isfinite(g).all() and torch.isfinite(target).all()):
        raise ValueError("fit_linear: g or target holds NaN/inf")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    g64, t64 = g.double(), target.double()
    gm = g64.mean(0) if bias else torch.zeros_like(g64[0])
    tm = t64.mean(0) if bias else torch.zeros_like(t64[0])
    gc, tc = g64 - gm, t64 - tm
    gram = gc.t() @ gc
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    w = torch.linalg.lstsq(gram + lam * eye, gc.t() @ tc).solution.t()  # "d_out d_in"
    return w.to(g.dtype), ((tm - w @ gm).to(g.dtype) if bias else None)


def _out_proj_input(mixer, u: torch.Tensor) -> torch.Tensor:
    """The input of mixer.out_proj (y * silu(z)) for mixer input u, through the module's forward."""
    seen = {}
    hook = mixer.out_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("g", args[0]))
    try:
        mixer(u)
    finally:
        hook.remove()
    return seen["g"]


def _residual(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Relative squared error ||pred - target||^2 / ||target - mean(target)||^2 (1 - R^2)."""
    return float((pred - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12))


GELU_AS_SILU = 1.702  # gelu(a) ~ a sigmoid(1.702 a) = silu(1.702 a) / 1.702


@torch.no_grad()
def host_mlp_neurons_(blk, tblk, m_i: torch.Tensor, u: torch.Tensor, channels: torch.Tensor,
                      to_student, ridge: float) -> str:
    """Put teacher block `tblk`'s top-|channels| MLP neurons into the mixer's `channels` (module
    docstring): in_proj rows/bias fit to their pre-activations, D = 1 / (m K) on those channels.
    m_i: the teacher's state after attention (teacher tokens); u: the student block's input."""
    mixer = blk.mixer
    pre = tblk.mlp.fc1(tblk.norm2(m_i))  # teacher tokens, "... F"
    importance = torch.nn.functional.gelu(pre).abs().flatten(0, -2).mean(0)
    neurons = torch.topk(importance, min(len(channels), importance.numel())).indices
    channels = channels[:len(neurons)]
    a = to_student(pre.index_select(-1, neurons), resid=False).flatten(0, 1)
    has_bias = mixer.in_proj.bias is not None
    w, b = fit_linear(blk.norm1(u).flatten(0, 1), a, ridge, bias=has_bias)
    mixer.in_proj.weight[channels] = GELU_AS_SILU * w
    if has_bias:
        mixer.in_proj.bias[channels] = GELU_AS_SILU * b
    mixer.D[:, channels] = 1.0 / (merge_weight(mixer) * mixer.n_orders)
    return f", {len(channels)} MLP neurons hosted"


@torch.no_grad()
def calibrate_out_proj_(teacher: ViT, student: VisionMamba, n_layers: int, calib: torch.Tensor,
                        idx: torch.Tensor, ridge: float = 1e-3,
                        mlp_channels: list[torch.Tensor] | None = None) -> list[str]:
    """Refit out_proj of student blocks 0..n_layers-1 in place (module docstring). calib: images
    "b c H W" (or clips "b t c H W" for VideoMamba); idx: the student's residual dims of the
    teacher's (`transfer_vit_to_student(...)["resid_idx"]`); mlp_channels: per layer, the free
    inner channels that host teacher MLP neurons first (blocks without an MLP only; None: none).
    Returns one line per block with the relative error of the block's update before and after
    (1 - R^2 against target_i)."""
    if not 0 <= n_layers <= len(student.blocks):
        raise ValueError(f"n_layers={n_layers} must be in [0, {len(student.blocks)}]")
    t_was, s_was = teacher.training, student.training
    teacher.eval(), student.eval()
    stats: list = []
    _, hidden, _ = teacher(calib, return_hidden=True, stats=stats)
    n_prefix = teacher.n_prefix

    def to_student(h, resid: bool = True):  # teacher tokens (frames for video) -> student layout
        if calib.dim() == 5 and h.dim() == 3:  # (and the student's residual dims if resid)
            h = h.unflatten(0, calib.shape[:2])
        if resid:
            h = h.index_select(-1, idx.to(h.device))
        return student.align_teacher_tokens(h, n_prefix)

    u = student.embed(calib)
    done = []
    for i in range(n_layers):
        blk = student.blocks[i]
        aim = hidden[i] if blk.mlp is None else stats[i]["norm2_in"]
        target = (to_student(aim) - u).flatten(0, 1)
        g = _out_proj_input(blk.mixer, blk.norm1(u)).flatten(0, 1)
        before = _residual(blk.mixer.out_proj(g), target)
        hosted = ""
        if mlp_channels is not None and blk.mlp is None and len(mlp_channels[i]):
            hosted = host_mlp_neurons_(blk, teacher.blocks[i], stats[i]["norm2_in"], u, mlp_channels[i],
                                       to_student, ridge)
            g = _out_proj_input(blk.mixer, blk.norm1(u)).flatten(0, 1)  # with the hosted channels
        has_bias = blk.mixer.out_proj.bias is not None
        w, b = fit_linear(g, target, ridge, bias=has_bias)
        blk.mixer.out_proj.weight.copy_(w)
        if has_bias:
            blk.mixer.out_proj.bias.copy_(b)
        after = _residual(blk.mixer.out_proj(g), target)
        done.append(f"blocks.{i}.out_proj fit to the teacher's "
                    f"{'block' if blk.mlp is None else 'attention'} (error {before:.3f} -> {after:.3f})"
                    + hosted)
        u, _ = blk(u)
    teacher.train(t_was), student.train(s_was)
    return done


@torch.no_grad()
def calibrate_head_(teacher: ViT, student: VisionMamba, calib: torch.Tensor, ridge: float = 1e-3) -> str:
    """Refit the student's head in place so its logits match the teacher's on `calib` (module
    docstring); returns a line with the relative error before and after."""
    n_cls = getattr(teacher.head, "out_features", None)
    if n_cls != student.head.out_features:
        raise ValueError(f"calibrate_head_ needs a teacher head with the student's "
                         f"{student.head.out_features} classes, the teacher has {n_cls}")
    t_was, s_was = teacher.training, student.training
    teacher.eval(), student.eval()
    target = teacher(calib)
    h = student.embed(calib)
    for blk in student.blocks:
        h, _ = blk(h)
    feat = student.pool(student.norm_f(h))
    before = _residual(student.head(feat), target)
    w, b = fit_linear(feat, target, ridge)
    student.head.weight.copy_(w)
    student.head.bias.copy_(b)
    after = _residual(student.head(feat), target)
    teacher.train(t_was), student.train(s_was)
    return f"head fit to the teacher's logits (error {before:.3f} -> {after:.3f})"
