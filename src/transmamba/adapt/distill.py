"""Adaptive multi-directional distillation (TransMamba-Adapt, Chen et al. 2025).

Pieces (each a function below with its equation):

    feature calibration   s~ = c(n(pad(s))),  t~ = n(t)
                          pad: zero-pad the student feature to the teacher width
                          n(v) = (v - mean(v)) / sqrt(var(v) + eps)      per token, no affine
                          c(v) = v + W2 gelu(W1 v + b1) + b2              small residual MLP, W2 = 0 at init
    token cosine          cos = mean_{b, tokens} <s~, t~> / (|s~| |t~|)
    adaptive weights      w_i = (sum_j cos_j) / cos_i,  cos clamped to [eps, 1], detached (not learned)
    adaptive loss         L = sum_i w_i (1 - cos_i)
    multi-directional     L_dir = sum_k sum_i w_{i,k} (1 - cos(s~_{i,k}, t~_{a(i)}[perm_k]))
                          (direction k's output, in its scan order, against the teacher's tokens of
                          the aligned layer a(i) put into the same order)
    logit distillation    L_kd = T^2 KL(softmax(z_t / T) || softmax(z_s / T))
    total                 L = alpha L_task + (1 - alpha) L_dir (+ kd_weight L_kd)

Layer alignment: student layer i (of L_s) <- teacher layer a(i) = round((i + 1) L_t / L_s) - 1.

Baseline "released": the authors' released code matches EVERY student layer to the teacher's FINAL
feature with fixed depth-growing weights w_i = (i + 1) / L_s (our reading of that code's form):
    L_rel = sum_k sum_i (i + 1) / L_s (1 - cos(s~_{i,k}, t~_{L_t}[perm_k])).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.ops.validate import check_tensor

FORMS = ("paper", "released")


def pad_to(x: torch.Tensor, width: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-pad the last dim of x "... d" to `width` (d <= width): out[..., index[j]] = x[..., j],
    zeros elsewhere; index defaults to arange(d) (plain right padding). A subcloned student passes
    the teacher dims it was cut from, so its features land on the teacher's coordinates."""
    d = x.shape[-1]
    if d > width:
        raise ValueError(f"cannot pad a feature of width {d} down to {width}")
    if index is None:
        return F.pad(x, (0, width - d)) if d < width else x
    if index.shape != (d,):
        raise ValueError(f"index must have shape ({d},), got {tuple(index.shape)}")
    out = x.new_zeros(*x.shape[:-1], width)
    return out.index_copy(-1, index.to(x.device), x)


def token_normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """n(x) = (x - mean(x)) / sqrt(var(x) + eps) over the last dim (per token, no affine)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


class FeatureCalibration(nn.Module):
    """s~ = n(pad(s)) + MLP(n(pad(s))): "b l d_s" -> "b l d_t".

    The MLP's output layer starts at zero, so calibration starts as the identity on normalised
    features (an exact-width subclone starts aligned). `index` "d_s": the teacher dims the student
    dims were subcloned from (see `pad_to`); None pads on the right."""

    def __init__(self, d_student: int, d_teacher: int, hidden: int | None = None,
                 index: torch.Tensor | None = None):
        super().__init__()
        if d_student > d_teacher:
            raise ValueError(f"d_student={d_student} must not exceed d_teacher={d_teacher}")
        self.d_student, self.d_teacher = d_student, d_teacher
        if index is not None:
            index = torch.as_tensor(index, dtype=torch.long)
            if index.shape != (d_student,) or index.unique().numel() != d_student or \
                    int(index.min()) < 0 or int(index.max()) >= d_teacher:
                raise ValueError(f"index must hold {d_student} distinct dims in [0, {d_teacher}), "
                                 f"got shape {tuple(index.shape)}")
        self.register_buffer("index", index, persistent=False)
        hidden = hidden or d_teacher
        self.fc1 = nn.Linear(d_teacher, hidden)
        self.fc2 = nn.Linear(hidden, d_teacher)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        check_tensor("s", s, s.dim(), "(..., d_student)")
        if s.shape[-1] != self.d_student:
            raise ValueError(f"s has width {s.shape[-1]} (shape {tuple(s.shape)}), "
                             f"expected d_student={self.d_student}")
        v = token_normalize(pad_to(s, self.d_teacher, self.index))
        return v + self.fc2(F.gelu(self.fc1(v)))


def token_cosine(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos = mean over all tokens of <s, t> / (|s| |t|); s, t "... d" of equal shape -> scalar."""
    if s.shape != t.shape:
        raise ValueError(f"s {tuple(s.shape)} and t {tuple(t.shape)} must have the same shape")
    # each side normalised with its norm clamped at eps, as F.cosine_similarity, in 4x less time
    # forward + backward (the target t usually carries no gradient, so its unit vectors are cheap)
    t_hat = t / t.norm(dim=-1, keepdim=True).clamp_min(eps)
    return ((s * t_hat).sum(-1) / s.norm(dim=-1).clamp_min(eps)).mean()


def token_cosine_ref(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Reference of `token_cosine`: `F.cosine_similarity` over the last dim, mean over tokens."""
    return F.cosine_similarity(s, t, dim=-1, eps=eps).mean()


def adaptive_weights(cos: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    """w_i = (sum_j c_j) / c_i with c = clamp(cos, eps, 1), detached: "L" -> "L".

    Layers the student matches worst (small cos) get the largest weight; the weights are not
    learned and carry no gradient."""
    check_tensor("cos", cos, 1, "(L,)")
    c = cos.detach().clamp(eps, 1.0)
    return c.sum() / c


def adaptive_layer_loss(cos: torch.Tensor, adaptive: bool = True, eps: float = 0.05,
                        normalize: bool = False) -> torch.Tensor:
    """L = sum_i w_i (1 - cos_i), w = adaptive_weights(cos) (or w_i = 1 without adaptive scaling).

    normalize=True: the weighted mean L = sum_i w_i (1 - cos_i) / sum_i w_i instead. The sum grows
    like n^2 with the number of aligned layers n (each w_i ~ n), which for a 30-layer LM drowns the
    logit terms; the mean keeps the same per-layer emphasis on a scale of (1 - cos) for any depth."""
    check_tensor("cos", cos, 1, "(L,)")
    w = adaptive_weights(cos, eps) if adaptive else torch.ones_like(cos)
    loss = (w * (1 - cos)).sum()
    return loss / w.sum() if normalize else loss


def fixed_depth_loss(cos: torch.Tensor) -> torch.Tensor:
    """Released-code form: L = sum_i (i + 1) / L (1 - cos_i), fixed depth-growing weights."""
    check_tensor("cos", cos, 1, "(L,)")
    L = cos.numel()
    w = torch.arange(1, L + 1, dtype=cos.dtype, device=cos.device) / L
    return (w * (1 - cos)).sum()


def kl_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """L_kd = T^2 mean_b sum_c p_t (log p_t - log p_s), p = softmax(z / T)."""
    check_tensor("student_logits", student_logits, 2, "(b, classes)")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    T = float(temperature)
    log_ps = F.log_softmax(student_logits / T, dim=-1)
    log_pt = F.log_softmax(teacher_logits.detach() / T, dim=-1)
    return (T * T) * (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


def aligned_teacher_layer(i: int, n_student: int, n_teacher: int) -> int:
    """a(i) = round((i + 1) n_teacher / n_student) - 1 (equal depths: a(i) = i)."""
    return max(0, min(n_teacher - 1, int(round((i + 1) * n_teacher / n_student)) - 1))


def direction_cosines(student_feats, teacher_tokens, perms, calibrators, layer_map) -> torch.Tensor:
    """cos[i, k] = token_cosine(calib_i(s_{i,k}), n(t_{a(i)}[:, perm_k])) -> "L_s K".

    student_feats[i][k] "b l d_s" (scan order k); teacher_tokens[j] "b l d_t" (student token
    layout, token order); perms "K l"; layer_map[i] = a(i)."""
    rows = []
    for i, dirs in enumerate(student_feats):
        t = token_normalize(teacher_tokens[layer_map[i]].detach())
        rows.append(torch.stack([token_cosine(calibrators[i](s), t.index_select(1, perms[k]))
                                 for k, s in enumerate(dirs)]))
    return torch.stack(rows)


class DirectionalDistillLoss(nn.Module):
    """Holds one FeatureCalibration per student layer; computes the multi-directional feature loss.

    form="paper": L = sum_k adaptive_layer_loss(cos[:, k]) against the aligned teacher layers
    (adaptive=False: w_i = 1). form="released": L = sum_k fixed_depth_loss(cos_final[:, k]) against
    the teacher's final layer (before its final norm). index: see `FeatureCalibration`."""

    def __init__(self, n_student_layers: int, n_teacher_layers: int, d_student: int, d_teacher: int,
                 form: str = "paper", adaptive: bool = True, hidden: int | None = None,
                 eps: float = 0.05, index: torch.Tensor | None = None):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form, self.adaptive, self.eps = form, adaptive, eps
        self.calibrators = nn.ModuleList(FeatureCalibration(d_student, d_teacher, hidden, index)
                                         for _ in range(n_student_layers))
        if form == "paper":
            self.layer_map = [aligned_teacher_layer(i, n_student_layers, n_teacher_layers)
                              for i in range(n_student_layers)]
        else:
            self.layer_map = [n_teacher_layers - 1] * n_student_layers

    def forward(self, student_feats, teacher_tokens, perms) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, cos "L_s K" detached)."""
        cos = direction_cosines(student_feats, teacher_tokens, perms, self.calibrators, self.layer_map)
        if self.form == "paper":
            loss = sum(adaptive_layer_loss(cos[:, k], self.adaptive, self.eps) for k in range(cos.shape[1]))
        else:
            loss = sum(fixed_depth_loss(cos[:, k]) for k in range(cos.shape[1]))
        return loss, cos.detach()


@torch.no_grad()
def teacher_targets(teacher: nn.Module, student: nn.Module, x: torch.Tensor,
                    window: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What the frozen teacher gives the student on x: (teacher logits, one token tensor per teacher
    layer, put into the student's token layout by `student.align_teacher_tokens`). window > 0 keeps
    the teacher's patch attention inside window x window tiles (`models.vit.window_mask`)."""
    logits, hidden, _ = teacher(x, return_hidden=True, window=window)
    return logits, [student.align_teacher_tokens(h, teacher.n_prefix) for h in hidden]


def total_loss(task: torch.Tensor, distill: torch.Tensor | None, alpha: float,
               kd: torch.Tensor | None = None, kd_weight: float = 0.0) -> torch.Tensor:
    """L = alpha L_task + (1 - alpha) L_dir + kd_weight L_kd (missing terms count as 0)."""
    out = alpha * task
    if distill is not None:
        out = out + (1 - alpha) * distill
    if kd is not None and kd_weight:
        out = out + kd_weight * kd
    return out
