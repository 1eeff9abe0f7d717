"""The vocabulary head and its distillation losses in one pass, without the full logits tensor.

    z    = h W^T                                   "n V"   (logits; n = b l tokens, V = vocabulary)
    CE   = mean_{t: y_t != -100} (logsumexp(z_t) - z_t[y_t])
    KL   = mean_t sum_j p_tj (log p_tj - log q_tj)  p = softmax_j(topk_logp_t / T),
                                                    q = softmax_j(z_t[topk_idx_t] / T)   (j = 1..k)
    loss = w_ce CE + w_kl KL

(KL as `transmamba.teachers.cache.topk_kl`: both distributions renormalised over the teacher's
top k.) For a 49k vocabulary the logits of 8 x 256 tokens are 100M floats; building them, their
fp32 copy, a log_softmax for CE, a second one for KL and the zero-filled gradients of two gathers
took ~60% of a SmolLM2-student distillation step. `head_ce_kl` walks the tokens in chunks of
`chunk` rows instead: per chunk it forms z, the losses and, since the loss is the graph's end,
the gradient at once,

    dloss/dz = w_ce (softmax(z) - onehot(y)) / n_valid + w_kl scatter(topk_idx, (q - p) / T) / n
    dh       = dz W          dW += dz^T h

so backward only scales the stored dh, dW by the incoming gradient (no second pass, 3 head matmuls
as in autograd). Matmuls run in bf16 under CPU/CUDA autocast (fp32 accumulation, as autocast's own
linear), everything on z in fp32. `head_ce_kl_ref` is the plain autograd composition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transmamba.ops.validate import check_dim, check_tensor

IGNORE = -100


def _check(h, weight, targets, topk_idx, topk_logp, T, chunk):
    check_tensor("h", h, 2, "(n, d)")
    check_tensor("weight", weight, 2, "(V, d)")
    check_dim("weight", weight, 1, h.shape[1], "h (n, d)")
    if not isinstance(targets, torch.Tensor) or targets.shape != h.shape[:1] or targets.is_floating_point():
        raise ValueError(f"targets must be an integer tensor of shape ({h.shape[0]},), got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
    if (topk_idx is None) != (topk_logp is None):
        raise ValueError("topk_idx and topk_logp go together: give both or neither")
    if topk_idx is not None:
        if topk_idx.dim() != 2 or topk_idx.is_floating_point() or topk_idx.shape[0] != h.shape[0]:
            raise ValueError(f"topk_idx must be an integer tensor of shape ({h.shape[0]}, k), got "
                             f"{topk_idx.dtype} {tuple(topk_idx.shape)}")
        check_tensor("topk_logp", topk_logp, 2, "(n, k)")
        if topk_logp.shape != topk_idx.shape:
            raise ValueError(f"topk_logp {tuple(topk_logp.shape)} must have the shape of topk_idx {tuple(topk_idx.shape)}")
        if topk_idx.numel() and (int(topk_idx.min()) < 0 or int(topk_idx.max()) >= weight.shape[0]):
            raise ValueError(f"topk_idx holds ids outside [0, V={weight.shape[0]})")
    valid = targets != IGNORE
    if bool(((targets[valid] < 0) | (targets[valid] >= weight.shape[0])).any()):
        raise ValueError(f"targets hold ids outside [0, V={weight.shape[0]}) (other than {IGNORE})")
    if not T > 0:
        raise ValueError(f"T must be > 0, got {T}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


class _HeadCEKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, topk_idx, topk_logp, w_ce, w_kl, T, chunk, cd, want_grad):
        n = h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            W = weight.to(cd)
            valid = targets != IGNORE
            n_valid = int(valid.sum())
            acc = torch.promote_types(cd, torch.float32)  # z, the losses and dW: fp32 (fp64 for fp64 inputs)
            ce_sum = torch.zeros((), dtype=acc, device=h.device)
            kl_sum = torch.zeros((), dtype=acc, device=h.device)
            dh = torch.empty_like(h) if want_grad else None
            dW = torch.zeros(weight.shape, dtype=acc, device=h.device) if want_grad else None
            for s in range(0, n, chunk):
                hc = h[s:s + chunk].to(cd)
                z = (hc @ W.T).to(acc)  # "c V"
                lse = torch.logsumexp(z, dim=-1)
                yc, vc = targets[s:s + chunk], valid[s:s + chunk]
                y_safe = torch.where(vc, yc, 0).long()
                if n_valid:
                    ce_sum += ((lse - z.gather(1, y_safe[:, None])[:, 0]) * vc).sum()
                if topk_idx is not None:
                    ic = topk_idx[s:s + chunk].long()
                    log_q = F.log_softmax(z.gather(1, ic) / T, dim=-1)
                    log_p = F.log_softmax(topk_logp[s:s + chunk].to(acc) / T, dim=-1)
                    p = log_p.exp()
                    kl_sum += (p * (log_p - log_q)).sum()
                if not want_grad:
                    continue
                # dz in place of z: softmax(z) * w_ce / n_valid, minus the target, plus the KL term
                g = z.sub_(lse[:, None]).exp_()
                g.mul_(vc.to(acc)[:, None] * (w_ce / n_valid if n_valid else 0.0))  # ignored rows: no CE
                if w_ce and n_valid:
                    g.scatter_add_(1, y_safe[:, None], (-w_ce / n_valid) * vc.to(acc)[:, None])
                if topk_idx is not None and w_kl:
                    g.scatter_add_(1, ic, (log_q.exp() - p) * (w_kl / (T * n)))
                g = g.to(cd)
                dh[s:s + chunk] = (g @ W).to(h.dtype)
                dW.add_(g.T @ hc)  # exact upcast inside the add: no V x d temporary per chunk
            ce = ce_sum / n_valid if n_valid else torch.full((), float("nan"), dtype=acc, device=h.device)
            kl = kl_sum / n if topk_idx is not None and n else torch.zeros((), dtype=acc, device=h.device)
            loss = (w_ce * ce if w_ce else 0.0) + (w_kl * kl if w_kl else 0.0)
            loss = torch.as_tensor(loss, dtype=acc, device=h.device)
        if want_grad:
            ctx.save_for_backward(dh, dW.to(weight.dtype))
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl

    @staticmethod
    def backward(ctx, g_loss, _g_ce, _g_kl):
        dh, dW = ctx.saved_tensors
        return dh * g_loss.to(dh.dtype), dW * g_loss.to(dW.dtype), None, None, None, None, None, None, None, None, None


def head_ce_kl(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               topk_idx: torch.Tensor | None = None, topk_logp: torch.Tensor | None = None, *,
               w_ce: float = 1.0, w_kl: float = 1.0, T: float = 1.0, chunk: int = 256):
    """(loss, CE, KL) of the head weight "V d" on features h "n d" (see the module docstring).

    targets "n" (IGNORE = -100 rows count in KL only), topk_idx / topk_logp "n k" or None (KL = 0).
    CE and KL are detached (for logging); the gradient flows through `loss` into h and weight.
    """
    _check(h, weight, targets, topk_idx, topk_logp, T, chunk)
    return _HeadCEKL.apply(h, weight, targets, topk_idx, topk_logp, float(w_ce), float(w_kl), float(T),
                           int(chunk), _compute_dtype(h),
                           torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad))


def head_ce_kl_ref(h, weight, targets, topk_idx=None, topk_logp=None, *, w_ce: float = 1.0, w_kl: float = 1.0,
                   T: float = 1.0):
    """Reference of `head_ce_kl`: full logits, `F.cross_entropy` and the top-k KL by autograd."""
    _check(h, weight, targets, topk_idx, topk_logp, T, 1)
    z = F.linear(h, weight)
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    ce = F.cross_entropy(z, targets.long(), ignore_index=IGNORE)
    kl = torch.zeros((), dtype=z.dtype, device=h.device)
    if topk_idx is not None:
        log_q = F.log_softmax(z.gather(1, topk_idx.long()) / T, dim=-1)
        log_p = F.log_softmax(topk_logp.to(z.dtype) / T, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return w_ce * ce + w_kl * kl, ce.detach(), kl.detach()
