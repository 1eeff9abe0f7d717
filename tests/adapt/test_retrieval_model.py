"""Retrieval model and fusions (adapt.retrieval_model, adapt.cross_attention): shapes, masks, sizes."""

import pytest
import torch

from transmamba.adapt.cross_attention import CrossAttention, cross_attention_params, matched_width
from transmamba.adapt.retrieval_model import RetrievalModel, build_fusion, encode_tokens
from transmamba.models.vision import build_student
from transmamba.models.vit import ViT, ViTConfig


def _vim():
    torch.manual_seed(0)
    return build_student({"arch": "vim", "img_size": 8, "patch_size": 2, "d_model": 16, "depth": 2,
                          "d_state": 4, "num_classes": 3})


def test_cross_attention_masks_padding():
    torch.manual_seed(0)
    ca = CrossAttention(16, 12, 8, num_heads=2)
    v, text = torch.randn(3, 5, 16), torch.randn(3, 4, 12)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    out = ca(v, text, mask)
    assert out.shape == (3, 5, 16)
    text2 = text.clone()
    text2[~mask] = 1e3  # padded tokens may hold anything
    assert torch.allclose(ca(v, text2, mask), out, atol=1e-5)
    assert torch.allclose(ca(v[:1], text[:1, :2]), out[:1], atol=1e-5)  # = the unpadded call
    assert sum(p.numel() for p in ca.parameters()) == cross_attention_params(16, 12, 8)
    with pytest.raises(ValueError, match="text_mask"):
        ca(v, text, mask[:, :3])


@pytest.mark.parametrize("d_model,d_text", [(64, 384), (16, 12), (96, 384)])
def test_fusions_have_matched_sizes(d_model, d_text):
    cm = build_fusion("cross_mamba", d_model, d_text)
    ca = build_fusion("cross_attention", d_model, d_text)
    n_cm, n_ca = (sum(p.numel() for p in m.parameters()) for m in (cm, ca))
    assert abs(n_ca - n_cm) / n_cm < 0.1, (n_cm, n_ca)
    assert matched_width(n_cm, d_model, d_text) % 4 == 0


@pytest.mark.parametrize("fusion", ["none", "cross_mamba", "cross_attention"])
def test_retrieval_model_shapes_and_zero_init(fusion):
    m = RetrievalModel(_vim(), d_text=12, d_embed=8, fusion=fusion, d_state=4, num_heads=2)
    x = torch.randn(4, 1, 8, 8)
    v, tokens, feats = m.encode_visual(x, return_directions=True)
    assert v.shape == (4, 8) and torch.allclose(v.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert tokens.shape == (4, 17, 16) and len(feats) == 2
    t = m.encode_text(torch.randn(4, 12))
    assert m.dual_scores(t, v).shape == (4, 4)
    if fusion == "none":
        with pytest.raises(ValueError):
            m.cross_scores(tokens, torch.randn(4, 3, 12), torch.ones(4, 3, dtype=torch.bool))
    else:
        cs = m.cross_scores(tokens, torch.randn(4, 3, 12), torch.ones(4, 3, dtype=torch.bool))
        assert cs.shape == (4,) and torch.all(cs == 0)  # the match head starts at zero: s = s_dual


def test_vit_tokens_on_clips():
    vit = ViT(ViTConfig(img_size=8, patch_size=4, d_model=16, depth=1, num_heads=2, d_ff=16, num_classes=3))
    tokens, pooled, feats = encode_tokens(vit, torch.randn(2, 3, 1, 8, 8))
    assert tokens.shape == (2, 3 * 5, 16) and pooled.shape == (2, 16) and feats == []
