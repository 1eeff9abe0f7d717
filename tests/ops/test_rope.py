"""transmamba.ops.rope: rotary position embeddings match HF Llama's and are relative."""

import pytest
import torch

from transmamba.ops.rope import apply_rope, rope_cos_sin

F64 = torch.float64


# --------------------------------------------------------------------------------------- rope
def test_rope_matches_hf_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0)
    rot = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(3, 40)[None]
    q, k = torch.randn(1, 37, 4, 16), torch.randn(1, 37, 2, 16)
    cos_hf, sin_hf = rot(q, pos)
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos_hf, sin_hf)
    cos, sin = rope_cos_sin(pos[0], 16, 500000.0)
    torch.testing.assert_close(cos, cos_hf[0])
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf.transpose(1, 2))
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf.transpose(1, 2))


def test_rope_is_relative():
    """<rope(q, m), rope(k, n)> depends only on m - n, and rope preserves norms."""
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8, dtype=F64), torch.randn(1, 1, 1, 8, dtype=F64)

    def rot(t, p):
        c, s = rope_cos_sin(torch.tensor([p]), 8, 100.0, dtype=F64)
        return apply_rope(t, c, s)

    dots = [(rot(q, m) * rot(k, m - 3)).sum() for m in (3, 7, 20)]
    torch.testing.assert_close(dots[0], dots[1])
    torch.testing.assert_close(dots[0], dots[2])
    assert not torch.allclose((rot(q, 7) * rot(k, 3)).sum(), (rot(q, 7) * rot(k, 5)).sum())
    torch.testing.assert_close(rot(q, 11).norm(), q.norm())
    with pytest.raises(ValueError, match="cos"):
        apply_rope(q, torch.ones(2, 8), torch.ones(2, 8))
    with pytest.raises(ValueError, match="dim"):
        rope_cos_sin(torch.arange(3), 7)
