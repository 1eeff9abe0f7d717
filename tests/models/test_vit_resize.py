"""resize_vit: weights copied, positions tiled or interpolated."""

import pytest
import torch

from transmamba.models.vit import ViT, ViTConfig
from transmamba.models.vit_resize import resize_vit


def test_tile_and_interpolate():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(img_size=8, patch_size=4, d_model=16, depth=1, num_heads=2, d_ff=16, num_classes=3))
    big = resize_vit(vit, 16, "tile", noise=0.0)
    assert big.cfg.img_size == 16 and big.pos_embed.shape == (1, 17, 16)
    assert torch.equal(big.blocks[0].mlp.fc1.weight, vit.blocks[0].mlp.fc1.weight)
    p = big.pos_embed[0, 1:].reshape(4, 4, 16)
    small = vit.pos_embed[0, 1:].reshape(2, 2, 16)
    assert torch.equal(p[2:, 2:], small) and torch.equal(p[:2, 2:], small)
    assert torch.equal(big.pos_embed[0, 0], vit.pos_embed[0, 0])
    x = torch.randn(2, 1, 16, 16)
    assert big(x).shape == (2, 3)
    assert resize_vit(vit, 12, "interpolate").pos_embed.shape == (1, 10, 16)
    with pytest.raises(ValueError, match="multiple"):
        resize_vit(vit, 12, "tile")
