"""AttentionPool: einsum path vs the per-head loop reference (values and gradients, float64), the
mean at initialisation, shape errors, and that it can read a position a mean cannot."""

import pytest
import torch

from transmamba.adapt.attention_pool import AttentionPool, attention_pool, attention_pool_ref


@pytest.mark.parametrize("b,l,d,h", [(1, 1, 3, 1), (2, 7, 5, 3), (3, 16, 8, 4)])
def test_attention_pool_matches_reference_values_and_grads(b, l, d, h):
    g = torch.Generator().manual_seed(b * 100 + l)
    u = torch.randn(b, l, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(h, d, generator=g, dtype=torch.float64, requires_grad=True)
    out, ref = attention_pool(u, w), attention_pool_ref(u, w)
    assert out.shape == (b, h * d)
    torch.testing.assert_close(out, ref)
    cot = torch.randn_like(out)
    gu, gw = torch.autograd.grad(out, (u, w), cot)
    ru, rw = torch.autograd.grad(ref, (u, w), cot)
    torch.testing.assert_close(gu, ru)
    torch.testing.assert_close(gw, rw)


def test_attention_pool_starts_as_the_mean():
    u = torch.randn(2, 9, 6)
    pool = AttentionPool(6, heads=3)
    torch.testing.assert_close(pool(u), u.mean(1).repeat(1, 3))
    assert pool.d_out == 18


def test_attention_pool_rejects_bad_shapes():
    pool = AttentionPool(6, heads=2)
    with pytest.raises(ValueError, match="d_model"):
        pool(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="u"):
        pool(torch.randn(4, 6))
    with pytest.raises(ValueError, match="heads"):
        AttentionPool(6, heads=0)


def test_attention_pool_reads_the_flagged_position_a_mean_cannot():
    """Tokens = [flag, one-hot position]; the answer is the flagged token's position. The mean of
    the tokens gives the flag's weight on every position alike (1/l each) and cannot tell; a
    trained pool reads the flagged token and can."""
    torch.manual_seed(0)
    l, n = 6, 512
    pos = torch.randint(0, l, (n,))
    u = torch.cat([torch.zeros(n, l, 1), torch.eye(l).expand(n, l, l)], dim=-1)
    u[torch.arange(n), pos, 0] = 1.0
    accs = {}
    for name in ("mean", "attn"):
        pool = AttentionPool(l + 1, heads=1)
        head = torch.nn.Linear(l + 1, l)
        params = list(head.parameters()) + (list(pool.parameters()) if name == "attn" else [])
        opt = torch.optim.Adam(params, lr=0.1)
        read = (lambda x: x.mean(1)) if name == "mean" else pool
        for _ in range(200):
            loss = torch.nn.functional.cross_entropy(head(read(u)), pos)
            opt.zero_grad()
            loss.backward()
            opt.step()
        accs[name] = (head(read(u)).argmax(-1) == pos).float().mean().item()
    assert accs["mean"] < 0.3 and accs["attn"] > 0.95, accs
