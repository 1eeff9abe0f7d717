"""The LM distillation step of `transmamba convert`: a Switch student against a causal-LM teacher's cached outputs.

    loss = w_kl KL_topk(teacher || student) + w_hidden sum_i w_i (1 - cos_i) + w_ce CE

KL_topk over the teacher's top k tokens (`ops.topk_kl`), cos_i the per-token cosine of the student's
layer i output with its teacher layer's hidden state (on the subcloned dims), w_i the adaptive layer
weights (`adapt.distill.adaptive_layer_loss`); the vision recipes' distillation losses are in
`adapt/distill.py` beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.adapt.distill import adaptive_layer_loss, token_cosine, token_cosine_ref
from transmamba.models.lm import LM
from transmamba.ops.head_loss import head_ce_kl
from transmamba.ops.topk_kl import topk_kl


class DistillStep(nn.Module):
    """loss = w_kl KL_topk(teacher || student) + w_hidden sum_i w_i (1 - cos_i) + w_ce CE (recipe.distill),
    or plain CE; batches are (x, y, topk_idx, topk_logp, *hidden) from the teacher cache.

    The head and its two losses run chunked (`ops.head_loss.head_ce_kl`, no full logits tensor);
    `reference=True` computes the same loss the plain way (the slow twin, and the step as it was
    before: `transmamba bench distill`'s peer)."""

    def __init__(self, student: LM, cfg: dict, layer_map: list[int], dims: torch.Tensor, reference: bool = False):
        super().__init__()
        self.model = student
        self.reference = reference  # full logits, F.cross_entropy, topk_kl, F.cosine_similarity
        self.t, self.rec, self.L = cfg["train"], cfg["recipe"], cfg["data"]["seq_len"]
        self.layer_map = list(layer_map)
        self.register_buffer("dims", torch.as_tensor(dims), persistent=False)

    def forward(self, batch, step: int):
        x, y, topk_idx, topk_logp, *hidden = batch
        t, student = self.t, self.model
        tp = student.transpoints_for(self.L, step)
        distill = self.rec["distill"]
        if student.cfg.final_softcap is None and not self.reference:  # head + losses chunked
            xL, h = student.trunk(x, transpoints=tp, return_hidden=distill)
            w_ce, w_kl = (t["w_ce"], t["w_kl"]) if distill else (1.0, 0.0)
            loss, ce, kl = head_ce_kl(student.norm_f(xL).flatten(0, 1), student.lm_head.weight, y.flatten(),
                                      topk_idx.flatten(0, 1) if distill else None,
                                      topk_logp.flatten(0, 1) if distill else None, w_ce=w_ce, w_kl=w_kl,
                                      T=t["temperature"])
        else:  # the full logits (also for a soft-capped head)
            logits, ce, h = student(x, targets=y, transpoints=tp, return_hidden=True)
            kl = topk_kl(logits if logits.dtype == torch.float64 else logits.float(), topk_idx, topk_logp,
                        T=t["temperature"]) if distill else None
            loss = ce if not distill else t["w_ce"] * ce + t["w_kl"] * kl
        parts = {"loss_ce": ce.detach()}
        if not distill:
            return loss, parts
        parts["loss_kl"] = kl.detach()
        cosine = token_cosine_ref if self.reference else token_cosine
        up = lambda a: a if a.dtype == torch.float64 else a.float()  # noqa: E731  (fp32 or fp64 tests)
        cos = torch.stack([cosine(up(h[i + 1]), up(hidden[i][..., self.dims]))
                           for i in range(len(self.layer_map))])
        parts["loss_hidden"] = adaptive_layer_loss(cos, adaptive=self.rec["adaptive"], normalize=t["hidden_mean"])
        return loss + t["w_hidden"] * parts["loss_hidden"], parts
