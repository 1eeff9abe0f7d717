"""A ViT for larger inputs from a trained one: every weight copied, position embeddings resized.

    tile         the patch position grid g x g is repeated r x r times (g r x g r), plus N(0, noise^2):
                 each 28x28 cell of a 2x2 grid of Fashion-MNIST images starts with the positions
                 the classifier knows (the noise breaks the symmetry between cells)
    interpolate  bicubic resize of the g x g grid (a larger canvas with the same layout)

The class (and distillation) token positions are copied unchanged.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F

from transmamba.models.vit import ViT, ViTConfig


@torch.no_grad()
def resize_vit(vit: ViT, img_size: int, mode: str = "tile", noise: float = 0.02, seed: int = 0) -> ViT:
    """A new ViT(img_size) holding vit's weights; position embeddings by `mode` (tile | interpolate)."""
    if mode not in ("tile", "interpolate"):
        raise ValueError(f"mode must be 'tile' or 'interpolate', got {mode!r}")
    new = ViT(ViTConfig.from_dict({**asdict(vit.cfg), "img_size": img_size}))
    sd = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    new.load_state_dict(sd, strict=False)
    p = vit.n_prefix
    g, g2 = vit.cfg.grid, new.cfg.grid
    pos = vit.pos_embed[0, p:].reshape(g, g, -1)
    if mode == "tile":
        if g2 % g:
            raise ValueError(f"tile needs the new grid {g2} to be a multiple of {g}")
        r = g2 // g
        grid = pos.repeat(r, r, 1)
        gen = torch.Generator().manual_seed(seed)
        grid = grid + noise * torch.randn(grid.shape, generator=gen)
    else:
        grid = F.interpolate(pos.permute(2, 0, 1)[None], size=(g2, g2), mode="bicubic",
                             align_corners=False)[0].permute(1, 2, 0)
    new.pos_embed.copy_(torch.cat([vit.pos_embed[0, :p], grid.reshape(g2 * g2, -1)])[None])
    return new
