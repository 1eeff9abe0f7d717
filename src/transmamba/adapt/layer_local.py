"""Layer-local distillation: every student block learns its own teacher block, all at once.

Before end-to-end distillation (logits + hidden states through the whole student), each block i
of the student is trained on the teacher's OWN input to that block, so that no block waits for the
blocks below it to become good (MOHAWK's hidden-state alignment stage; LoLCATs' attention transfer
is the same idea for the mixer alone):

    u_i   = h^T_{a(i)}[dims]           the teacher's residual stream entering teacher block a(i)
                                       (cached; u_0 = the student's embedding, which subcloning
                                       copied from the teacher's)
    out_i = block_i(u_i; P_i)          the student block with its TransPoint: attention before P_i,
                                       the SSM path (Memory converter at P_i) from P_i on
    L_i   = sum_t |out_i - h^T_{a(i)+1}[dims]|^2 / sum_t |h^T_{a(i)+1} - h^T_{a(i)}|^2[dims]
    L     = mean_i L_i                 (each term normalised by the teacher block's own update)

There is no backpropagation between blocks (u_i carries no gradient), so the n block problems are
solved side by side in one backward pass, as cheap as one student forward + backward without the
vocabulary head. Where subcloning kept the teacher's width the attention path before P_i already
equals the teacher (L_i's first P_i tokens start at ~0); the loss teaches the SSM path, through the
shared C, B, x projections and its own gate, dt, A, norm, to continue where attention stops.
`train="mixer"` freezes every block's MLP (and its norm) during the stage.
"""

from __future__ import annotations

import torch
from torch import nn

TRAINABLE = ("block", "mixer")


def check_cached(layer_map: list[int], cached: list[int]) -> None:
    """Refuse a layer map whose block inputs h^T_{a(i)} the teacher cache does not hold (naming them;
    h^T_0, the embeddings, is the student's own)."""
    have = set(int(c) for c in cached) | {0}
    missing = [int(a) for a in layer_map if int(a) not in have]
    if missing:
        raise ValueError(f"the layer-local stage (recipe.local_tokens > 0) needs the teacher's input to each mapped "
                         f"block, hidden_states {missing} are not cached for layer_map {list(layer_map)}: it works "
                         f"when the student keeps the teacher's depth (layer_map uniform over as many layers)")


class LayerLocalStep(nn.Module):
    """forward(batch, step) -> (mean_i L_i, {"loss_local": ..}) on cache batches
    (x, y, topk_idx, topk_logp, *hidden) whose hidden list is h^T_{a(i)+1} for i = 0..n-1."""

    def __init__(self, student, layer_map: list[int], dims: torch.Tensor, seq_len: int, train: str = "block"):
        super().__init__()
        if train not in TRAINABLE:
            raise ValueError(f"recipe.local_train must be one of {TRAINABLE}, got {train!r}")
        self.model = student
        self.layer_map, self.L, self.train_what = list(layer_map), int(seq_len), train
        self.register_buffer("dims", torch.as_tensor(dims), persistent=False)
        # hidden[j] of a batch holds h_{layer_map[j] + 1}: where each block's input and target sit
        out_of = {a + 1: j for j, a in enumerate(self.layer_map)}
        self.inputs = [None if a == 0 else out_of[a] for a in self.layer_map]

    def frozen(self) -> list[nn.Parameter]:
        """The parameters this stage does not train: embeddings, final norm and head, and the MLPs
        (and their norms) with train="mixer"."""
        m, keep = self.model, set()
        for b in m.blocks:
            keep |= {id(p) for p in (b.parameters() if self.train_what == "block" else
                                     list(b.mixer.parameters()) + list(b.norm1.parameters()))}
        tied = {id(m.embed.weight)}
        return [p for p in m.parameters() if id(p) not in keep or id(p) in tied]

    def forward(self, batch, step: int):
        x, _, _, _, *hidden = batch
        m = self.model
        tp = m.transpoints_for(self.L, step)
        with torch.no_grad():
            u0 = m.embed_tokens(x)
        total = 0.0
        for i, block in enumerate(m.blocks):
            j = self.inputs[i]
            u = u0 if j is None else hidden[j][..., self.dims].to(u0.dtype)
            target = hidden[i][..., self.dims].to(u0.dtype)
            out = block(u, tp[i])
            scale = (target - u).float().pow(2).sum().clamp_min(1e-12)
            total = total + (out.float() - target.float()).pow(2).sum() / scale
        loss = total / len(m.blocks)
        return loss, {"loss_local": loss.detach()}
