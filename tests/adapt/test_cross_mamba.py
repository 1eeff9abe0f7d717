"""transmamba.adapt.cross_mamba: text-modulated Mamba starts as the plain mixer; prefix == concatenated scan."""

import pytest
import torch

from transmamba.adapt.cross_mamba import CrossMamba


# ---------------------------------------------------------------------------------------------
# cross-Mamba


def test_cross_mamba_modulate_starts_as_plain_mixer_then_uses_text():
    torch.manual_seed(0)
    m = CrossMamba(8, 5, d_state=4, mode="modulate").double()
    v = torch.randn(2, 7, 8, dtype=torch.float64)
    t1, t2 = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(m(v, t1), m(v, t2))
    torch.testing.assert_close(m(v, t1), m._scan(v))
    torch.nn.init.normal_(m.text_mod.weight, std=0.5)
    assert not torch.allclose(m(v, t1), m(v, t2))
    # the mask: padded tokens do not change the summary
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    t3 = t1.clone()
    t3[0, 2] = 100.0
    torch.testing.assert_close(m(v, t1, mask)[0], m(v, t3, mask)[0])
    out = m(v, t1)
    out.sum().backward()
    assert m.text_mod.weight.grad.abs().sum() > 0


def test_cross_mamba_prefix_equals_concatenated_scan():
    torch.manual_seed(1)
    m = CrossMamba(6, 4, d_state=3, mode="prefix").double()
    v = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    out, ref = m(v, t), m.forward_concat_ref(v, t)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [v, t], g), torch.autograd.grad(ref, [v, t], g)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="text_mask"):
        m(v, t, torch.tensor([[1, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="at least one real text token"):
        m(v, t, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="text"):
        m(v, torch.randn(3, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("lengths", [(4, 1, 2), (3, 3, 4), (2, 4, 1)])
def test_cross_mamba_prefix_with_padded_text_equals_each_row_alone(lengths):
    """Right-padded text (as a tokenizer pads) and padding in the middle: each row's output and
    gradients equal the prefix scan of that row's real tokens alone (lengths 1..4, d_conv = 4)."""
    torch.manual_seed(2)
    m = CrossMamba(6, 4, d_state=3, mode="prefix").double()
    v = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    mask[1] = torch.tensor([True, False, True, True]) if lengths[1] == 3 else mask[1]  # a hole, not only a tail
    out = m(v, t, mask)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [v, t], g)
    for i in range(3):
        keep = mask[i].nonzero().squeeze(1)
        ref = m(v[i:i + 1], t[i:i + 1, keep])
        torch.testing.assert_close(out[i:i + 1], ref)
        want = torch.autograd.grad(ref, [v, t], g[i:i + 1])
        torch.testing.assert_close(got[0][i], want[0][i])
        torch.testing.assert_close(got[1][i], want[1][i])  # padded tokens get no gradient, as if absent
