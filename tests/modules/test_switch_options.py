"""The Switch mixer's family options (bias, q/k norm, scaled RoPE, window, query scale, soft-cap):
P >= L is attention, P = 0 is the SSM, prefill + step is forward, float64, values and gradients."""

import pytest
import torch

from switch_refs import attention_ref, ssm_ref
from transmamba.modules.switch import SwitchConfig, SwitchMixer

OPTIONS = {
    "bias": dict(bias=True),
    "bias_in_only": dict(bias=True, out_bias=False),
    "qk_norm_head": dict(qk_norm="head"),
    "qk_norm_full": dict(qk_norm="full"),
    "rope_table": dict(rope=True, rope_inv_freq=[1.0, 0.3, 0.05, 0.002], rope_attention_factor=1.2),
    "no_rope": dict(rope=False),
    "window": dict(rope=True, sliding_window=5),
    "scale": dict(rope=True, attn_scale=0.2),
    "softcap": dict(rope=True, attn_softcap=1.5, attn_scale=0.4, sliding_window=7),
    "everything": dict(bias=True, qk_norm="head", rope=True, rope_inv_freq=[0.9, 0.2, 0.04, 0.001],
                       rope_attention_factor=0.8, sliding_window=6, attn_softcap=2.0, attn_scale=0.5),
}


pytestmark = pytest.mark.usefixtures("float64_default")  # tests/modules/conftest.py


def make(opts, h=4, g=2, n=8, d=16, seed=0):
    torch.manual_seed(seed)
    m = SwitchMixer(SwitchConfig(d_model=d, n_heads=h, n_kv_heads=g, head_dim=n, chunk_size=8, **opts))
    with torch.no_grad():  # make every parameter matter
        m.conv_bias.normal_(0, 0.1)
        m.norm_weight.normal_(1, 0.1)
        m.dt_bias.normal_(-1, 0.5)
        m.in_proj.weight.mul_(3)  # logits large enough for the soft-cap to bite
        for p in (m.in_proj.bias, m.out_proj.bias):
            if p is not None:
                p.normal_(0, 0.3)
        for p in (getattr(m, "q_norm_weight", None), getattr(m, "k_norm_weight", None)):
            if p is not None:
                p.normal_(1, 0.3)
    return m


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("heads", [(4, 2), (4, 4)])
def test_attention_and_ssm_invariants(name, heads):
    m = make(OPTIONS[name], *heads)
    u = torch.randn(2, 19, 16)
    L = u.shape[1]
    torch.testing.assert_close(m(u, transpoint=L), attention_ref(m, u), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m(u, transpoint=0), ssm_ref(m, u), atol=1e-10, rtol=1e-10)
    mid = m(u, transpoint=11)  # each side equals its pure layer
    torch.testing.assert_close(mid[:, :11], attention_ref(m, u)[:, :11], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(mid[:, 11:], ssm_ref(m, u)[:, 11:], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["everything", "qk_norm_full", "bias_in_only"])
def test_gradients_match_the_references(name):
    m = make(OPTIONS[name])
    u = torch.randn(1, 13, 16, requires_grad=True)
    w = torch.randn(1, 13, 16)
    for P, ref in ((13, attention_ref), (0, ssm_ref)):
        g_ours = torch.autograd.grad((m(u, transpoint=P) * w).sum(), [u, *m.parameters()], allow_unused=True)
        g_ref = torch.autograd.grad((ref(m, u) * w).sum(), [u, *m.parameters()], allow_unused=True)
        for a, b in zip(g_ours, g_ref):
            if a is None or b is None:
                assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum())
            else:
                torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("P", [0, 6, 9, 100])
def test_prefill_then_step_equals_forward(name, P):
    m = make(OPTIONS[name])
    u = torch.randn(2, 14, 16)
    full = m(u, transpoint=P)
    cache = m.allocate_cache(2, transpoint=P, max_len=14)
    outs = [m(u[:, :4], cache=cache)]
    outs += [m.step(u[:, t], cache)[:, None] for t in range(4, 14)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-10)


def test_default_options_keep_the_old_state_dict():
    m = SwitchMixer(SwitchConfig(d_model=16, n_heads=2, head_dim=8))
    assert not any("norm_weight" in k and k != "norm_weight" for k in m.state_dict())
    assert m.out_proj.bias is None and m.in_proj.bias is None


@pytest.mark.parametrize("bad, match", [(dict(qk_norm="layer"), "qk_norm"), (dict(sliding_window=0), "sliding_window"),
                                        (dict(attn_softcap=-1.0), "attn_softcap")])
def test_bad_options_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        SwitchConfig(d_model=16, n_heads=2, head_dim=8, **bad)
