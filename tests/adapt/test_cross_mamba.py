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
        m(v, t, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="text"):
        m(v, torch.randn(3, 4, 4, dtype=torch.float64))
