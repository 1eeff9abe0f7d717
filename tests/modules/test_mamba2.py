"""Our Mamba2 mixer loaded from a Hugging Face `Mamba2Mixer` gives its outputs and gradients."""

import pytest
import torch
from transformers import Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from transmamba.modules.mamba2 import Mamba2


def _hf_mixer(seed=0, **cfg) -> Mamba2Mixer:
    torch.manual_seed(seed)
    hf = Mamba2Mixer(Mamba2Config(num_hidden_layers=1, **cfg), 0)
    with torch.no_grad():  # move every weight off its init so that each one matters
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


SMALL = dict(hidden_size=32, num_heads=8, head_dim=8, state_size=8, n_groups=2, expand=2,
             chunk_size=8, conv_kernel=4, use_bias=True)
BENCH = dict(hidden_size=256, num_heads=8, head_dim=64, state_size=64, n_groups=1, expand=2,
             chunk_size=64, conv_kernel=4)


@pytest.mark.parametrize("L", [1, 7, 8, 29])
def test_small_config_outputs_and_grads_match(L):
    hf = _hf_mixer(**SMALL)
    ours = Mamba2.from_hf_mixer(hf)
    assert ours.nheads == 8 and ours.ngroups == 2 and ours.in_proj.bias is not None
    x = torch.randn(2, L, 32, requires_grad=True)
    y_hf, y = hf(x), ours(x)
    torch.testing.assert_close(y, y_hf, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(y)
    hf_params, our_params = dict(hf.named_parameters()), dict(ours.named_parameters())
    assert sorted(hf_params) == sorted(our_params)
    names = sorted(hf_params)
    gx_hf, *gp_hf = torch.autograd.grad(y_hf, [x, *(hf_params[n] for n in names)], g)
    gx, *gp = torch.autograd.grad(y, [x, *(our_params[n] for n in names)], g)
    torch.testing.assert_close(gx, gx_hf, atol=1e-4, rtol=1e-4)
    for n, a, b in zip(names, gp, gp_hf):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=lambda m: f"{n}: {m}")


def test_bench_config_matches():
    hf = _hf_mixer(seed=1, **BENCH)
    ours = Mamba2.from_hf_mixer(hf)
    x = torch.randn(1, 200, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-4)


def test_load_from_model_state_dict_with_prefix_and_bad_keys():
    hf = _hf_mixer(**SMALL)
    sd = {f"backbone.layers.3.mixer.{k}": v for k, v in hf.state_dict().items()}
    sd["backbone.layers.3.norm.weight"] = torch.ones(32)  # the block's pre-norm, not ours
    ours = Mamba2(32, d_state=8, headdim=8, ngroups=2, chunk_size=8, bias=True)
    ours.load_hf_state_dict(sd, prefix="backbone.layers.3.mixer.")
    x = torch.randn(1, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError):  # shapes of another config do not load silently
        Mamba2(32, d_state=16, headdim=8, ngroups=2).load_hf_state_dict(hf.state_dict())


def test_dt_limit_is_honoured():
    hf = _hf_mixer(**SMALL, time_step_limit=(0.05, 0.2))
    ours = Mamba2.from_hf_mixer(hf)
    assert ours.dt_limit == (0.05, 0.2)
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-4)
