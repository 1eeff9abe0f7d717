"""The VQA model of the multimodal Adapt recipe: a VisionMamba backbone, question tokens, a fusion.

Visual tokens v = norm_f(blocks(embed(x))) "b l d" of a ViM student; then one of three fusions,
all ending in the same MLP head -> 2 logits (no / yes):
    late      z = [mean_t v_t ; W_t mean_j text_j]                          (concat, "b 2d")
    modulate  g = v + CrossMamba_mod(n(v), text);   z = mean_t n'(g_t)      (text shifts B, C, dt)
    prefix    g = v + CrossMamba_pre(n(v), text);   z = mean_t n'(g_t)      (text scanned first,
              its SSM state starts the visual scan; run per group of equal question length)
    cross_attention  g = v + CrossAttention(n(v), text);  z = mean_t n'(g_t)  (a plain attention
              baseline with about the parameters of the modulate cross-Mamba, adapt/cross_attention.py)
`n_answers` logits (2 for yes/no; the grid task's shared answer vocabulary has 11).

Readout (`readout`): "mean" = mean_t as written above; "attn" = an AttentionPool of `readout_heads`
learned queries (adapt/attention_pool.py) in place of every mean_t over visual tokens. Its scores
see the fused tokens, so after a cross fusion the question picks which tokens are read; under late
fusion it pools v alone (the same pool for every question: still a pooled image vector).
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.adapt.attention_pool import AttentionPool
from transmamba.adapt.cross_attention import CrossAttention, matched_width
from transmamba.adapt.cross_mamba import CrossMamba

FUSIONS = ("late", "modulate", "prefix", "cross_attention")
READOUTS = ("mean", "attn")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s = sum_j mask_j x_j / sum_j mask_j: "b m d", "b m" -> "b d"."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class VQAModel(nn.Module):
    """Visual backbone (a VisionMamba student, head unused) + text tokens -> fusion -> 2 logits."""

    def __init__(self, backbone: nn.Module, d_text: int, fusion: str = "modulate",
                 hidden: int = 128, d_state: int = 8, expand: float = 2.0, n_answers: int = 2,
                 num_heads: int = 4, readout: str = "mean", readout_heads: int = 4):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.fusion, self.backbone = fusion, backbone
        backbone.head = nn.Identity()  # the image-classification head plays no part here
        d = backbone.cfg.d_model
        self.pool = AttentionPool(d, readout_heads) if readout == "attn" else None
        d_pool = self.pool.d_out if self.pool is not None else d
        if fusion == "late":
            self.text_proj = nn.Linear(d_text, d)
            d_in = d_pool + d
        else:
            self.norm_in = nn.LayerNorm(d)
            cm = CrossMamba(d, d_text, d_state=d_state, expand=expand,
                            mode="modulate" if fusion == "cross_attention" else fusion)
            if fusion == "cross_attention":
                width = matched_width(sum(p.numel() for p in cm.parameters()), d, d_text, num_heads)
                cm = CrossAttention(d, d_text, width, num_heads)
            self.cross = cm
            self.norm_out = nn.LayerNorm(d)
            d_in = d_pool
        self.head = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, n_answers))

    def visual_tokens(self, x: torch.Tensor, return_directions: bool = False):
        """v = norm_f(blocks(embed(x))) "b l d" (and per-layer direction features, or Nones)."""
        bb = self.backbone
        h, feats = bb.embed(x), []
        for blk in bb.blocks:
            h, dirs = blk(h, return_directions)
            feats.append(dirs)
        return bb.norm_f(h), feats

    def readout(self, u: torch.Tensor) -> torch.Tensor:
        """"b l d" -> "b d" (mean) or "b (h d)" (attention pool)."""
        return u.mean(1) if self.pool is None else self.pool(u)

    def fuse(self, v: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Visual tokens "b l d" + text "b m d_text" (mask "b m") -> logits "b n_answers"."""
        if self.fusion == "late":
            z = torch.cat([self.readout(v), self.text_proj(masked_mean(text, mask))], dim=-1)
        else:
            g = v + self.cross(self.norm_in(v), text, mask)
            z = self.readout(self.norm_out(g))
        return self.head(z)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                return_directions: bool = False):
        """logits "b 2" (and the backbone's direction features when return_directions)."""
        if text.shape[0] != x.shape[0] or tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text {tuple(text.shape)} / mask {tuple(mask.shape)} must match "
                             f"batch {x.shape[0]} and each other")
        v, feats = self.visual_tokens(x, return_directions)
        logits = self.fuse(v, text, mask)
        return (logits, feats) if return_directions else logits
