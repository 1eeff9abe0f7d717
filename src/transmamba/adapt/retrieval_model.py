"""The text-visual retrieval model: a visual encoder, the frozen text side's features, an optional
text-conditioned re-ranker.

Dual encoder (both directions):
    v = unit(W_v pool(V(x))),  t = unit(W_t mean_text),  s_dual(t, v) = exp(log_s) t . v
V = a ViT (tokens = norm(h_L); pool = class token, averaged over frames for clips) or a
VisionMamba student (tokens = norm_f(blocks(embed(x))); pool = the student's own pool).

Text-conditioned score (fusion "cross_mamba" or "cross_attention"), for the text -> visual direction:
    g = V(x) + F(n(V(x)), text tokens);   s(t, v) = s_dual(t, v) + w . mean_l n'(g_l) + b
F = CrossMamba (`cross_mode` "modulate": the mean text vector shifts the scan's B, C, dt; "prefix":
the text tokens are scanned first, in order, and their state starts the visual scan) or
CrossAttention of (about) the same parameter count as the CrossMamba. w starts at 0, so at init
s = s_dual. It is a re-ranker: it scores the top-K visual candidates of each text by s_dual
(training: the positive and the K-1 hardest in-batch negatives; evaluation: the top K of the gallery).
"""

from __future__ import annotations

import torch
from torch import nn

from transmamba.adapt.contrastive import LogitScale
from transmamba.adapt.cross_attention import CrossAttention, matched_width
from transmamba.adapt.cross_mamba import CrossMamba
from transmamba.models.vit import ViT

RETRIEVAL_FUSIONS = ("none", "cross_mamba", "cross_attention")


def unit(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def encode_tokens(backbone: nn.Module, x: torch.Tensor, return_directions: bool = False):
    """(tokens "b l d", pooled "b d", per-layer direction features or []) of a ViT or VisionMamba."""
    if isinstance(backbone, ViT):
        _, _, out = backbone(x, return_hidden=True)
        if out.dim() == 4:  # frame-wise on clips: "b t n d"
            return out.flatten(1, 2), out[:, :, 0].mean(1), []
        return out, out[:, 0], []
    h, feats = backbone.embed(x), []
    for blk in backbone.blocks:
        h, dirs = blk(h, return_directions)
        feats.append(dirs)
    tokens = backbone.norm_f(h)
    return tokens, backbone.pool(tokens), feats


def build_fusion(fusion: str, d_model: int, d_text: int, d_state: int = 8, expand: float = 2.0,
                 num_heads: int = 4, cross_mode: str = "modulate") -> nn.Module:
    """CrossMamba(cross_mode) or a CrossAttention with d_attn matched to its parameter count."""
    cm = CrossMamba(d_model, d_text, d_state=d_state, expand=expand, mode=cross_mode)
    if fusion == "cross_mamba":
        return cm
    if fusion == "cross_attention":
        target = sum(p.numel() for p in cm.parameters())
        return CrossAttention(d_model, d_text, matched_width(target, d_model, d_text, num_heads), num_heads)
    raise ValueError(f"fusion must be cross_mamba or cross_attention, got {fusion!r}")


class RetrievalModel(nn.Module):
    """Visual backbone + projections to a shared space + optional text-conditioned re-ranker."""

    def __init__(self, backbone: nn.Module, d_text: int, d_embed: int = 128, fusion: str = "none",
                 d_state: int = 8, expand: float = 2.0, num_heads: int = 4, cross_mode: str = "modulate"):
        super().__init__()
        if fusion not in RETRIEVAL_FUSIONS:
            raise ValueError(f"fusion must be one of {RETRIEVAL_FUSIONS}, got {fusion!r}")
        self.backbone, self.fusion = backbone, fusion
        d = backbone.cfg.d_model
        self.vis_proj = nn.Linear(d, d_embed)
        self.text_proj = nn.Linear(d_text, d_embed)
        self.scale = LogitScale()
        if fusion != "none":
            self.norm_in = nn.LayerNorm(d)
            self.cross = build_fusion(fusion, d, d_text, d_state, expand, num_heads, cross_mode)
            self.norm_out = nn.LayerNorm(d)
            self.match = nn.Linear(d, 1)
            nn.init.zeros_(self.match.weight)
            nn.init.zeros_(self.match.bias)

    def encode_visual(self, x: torch.Tensor, return_directions: bool = False):
        """(unit embeddings "b e", tokens "b l d", direction features)."""
        tokens, pooled, feats = encode_tokens(self.backbone, x, return_directions)
        return unit(self.vis_proj(pooled)), tokens, feats

    def encode_text(self, pooled_text: torch.Tensor) -> torch.Tensor:
        return unit(self.text_proj(pooled_text))

    def dual_scores(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """s[i, j] = exp(log_s) t_i . v_j  "n_t n_v"."""
        return self.scale() * t @ v.transpose(0, 1)

    def cross_scores(self, tokens: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-conditioned score of each (visual tokens p, text p) pair: "p l d", "p m d_text" -> "p"."""
        if self.fusion == "none":
            raise ValueError("fusion 'none' has no text-conditioned score")
        g = tokens + self.cross(self.norm_in(tokens), text.to(tokens.dtype), mask)
        return self.match(self.norm_out(g).mean(1)).squeeze(-1)
