"""`transmamba export --to bamba`: a layer-wise hybrid student as a native transformers Bamba."""

import re

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from transmamba.cli import main  # noqa: E402
from transmamba.hf.export_bamba import export_bamba  # noqa: E402
from transmamba.models.lm import LM, LMConfig  # noqa: E402
from transmamba.modules.schedule import ATTENTION_ONLY  # noqa: E402
from transmamba.hf.student import save_hf  # noqa: E402

BASE = dict(vocab_size=97, d_model=32, n_layers=4, n_heads=4, head_dim=16, d_state=16, expand=2, d_conv=4,
            chunk_size=8, max_seq_len=64)
SSM = {"n_kv_heads": 4, "conv_activation": "silu", "conv_init_identity": False}  # a Switch P = 0 layer
SWITCH = dict(arch="transmamba", n_kv_heads=2, balance_params=False, conv_activation=None,
              conv_init_identity=True, schedule={"name": "per_layer", "P": [0, ATTENTION_ONLY]},
              switch_layer_options=[SSM, {}, SSM, {}])


def _lm(**kw) -> LM:
    torch.manual_seed(0)
    lm = LM(LMConfig(**{**BASE, **kw})).eval()
    with torch.no_grad():  # move the parameters off their inits so that a mix-up shows
        for name, p in lm.named_parameters():
            if name.endswith(("dt_bias", "norm_weight", "norm.weight", "norm1.weight", "norm2.weight", "D")):
                p.add_(0.1 * torch.randn_like(p))
        for block in lm.blocks:
            m = block.mixer
            if hasattr(m, "conv_bias") and m.cfg.conv_activation == "silu":
                m.conv_bias.add_(0.1 * torch.randn_like(m.conv_bias))
    return lm


def _same_logits(lm: LM, out) -> None:
    idx = torch.randint(0, lm.cfg.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "BambaForCausalLM"
    with torch.no_grad():
        ours, theirs = lm(idx)[0], hf(idx, use_cache=False).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(arch="mamba2"),
                                dict(arch="hybrid", hybrid_attn_every=2, n_kv_heads=2, balance_params=False,
                                     tie_embeddings=False),
                                dict(arch="transformer", n_kv_heads=2, mlp_act="gelu_tanh")],
                         ids=["mamba2", "hybrid-gqa", "transformer-gelu"])
def test_exact_logits_mamba2_and_hybrid(tmp_path, kw):
    lm = _lm(**kw)
    _same_logits(lm, export_bamba(lm, tmp_path / "bamba"))


def test_exact_logits_switch_layerwise_hybrid(tmp_path):
    lm = _lm(**SWITCH)
    idx = torch.randint(0, 97, (1, 20))
    with torch.no_grad():  # the P = 0 layers really are SSM layers
        assert not torch.allclose(lm(idx)[0], lm(idx, transpoints=ATTENTION_ONLY)[0], atol=1e-3)
    out = export_bamba(lm, tmp_path / "bamba")
    cfg = AutoModelForCausalLM.from_pretrained(str(out)).config
    assert cfg.layers_block_type == ["linear_attention", "full_attention"] * 2
    assert cfg.num_key_value_heads == 2 and cfg.mamba_n_groups == 4
    _same_logits(lm, out)


def test_exact_logits_switch_attention_without_rope(tmp_path):
    lm = _lm(**{**SWITCH, "switch_rope": False})
    _same_logits(lm, export_bamba(lm, tmp_path / "bamba"))


REFUSALS = [
    ("staggered", dict(arch="transmamba"), "layer 1: TransPoint is neither 0 nor beyond"),
    ("fixed_P", {**SWITCH, "schedule": 8}, "layer 0: TransPoint"),
    ("attention_conv", {**SWITCH, "conv_init_identity": False}, "layer 1: an attention layer's q/k/v conv"),
    ("attention_conv_act", {**SWITCH, "conv_activation": "silu"}, "layer 1: an attention layer's q/k/v conv"),
    ("ssm_gqa", {**SWITCH, "switch_layer_options": [{**SSM, "n_kv_heads": 2}, {}, SSM, {}]},
     "layer 0: an SSM layer with n_kv_heads=2"),
    ("ssm_conv_act", {**SWITCH, "switch_layer_options": [{**SSM, "conv_activation": None}, {}, SSM, {}]},
     "layer 0: an SSM layer's conv_activation=None"),
    ("softcap", {**SWITCH, "switch_options": {"attn_softcap": 30.0}}, "layer 1: attn_softcap"),
    ("window", {**SWITCH, "switch_options": {"sliding_window": 4}}, "layer 1: sliding_window"),
    ("qk_norm", {**SWITCH, "switch_options": {"qk_norm": "head"}}, "layer 0: qk_norm"),
    ("bias", {**SWITCH, "switch_options": {"bias": True}}, "layer 0: in_proj bias"),
    ("post_norms", dict(arch="mamba2", post_norms=True), "model: post_norms"),
    ("final_softcap", dict(arch="mamba2", final_softcap=30.0), "model: final_softcap"),
    ("embed_scale", dict(arch="mamba2", embed_scale=2.0), "model: embed_scale"),
    ("mlp_widths", dict(arch="hybrid", hybrid_attn_every=2), "MLP width (intermediate_size)"),
    ("gelu_with_ssm", dict(arch="mamba2", mlp_act="gelu"), "model: mlp_act='gelu' with SSM layers"),
    ("head_level", {**SWITCH, "schedule": {"name": "head_hybrid", "base": SWITCH["schedule"], "kept_heads": [[2, 3]],
                                           "n_kv_heads": [4, 2, 4, 2]}},
     "layer 2: head-level TransPoints (layer 2"),
]


@pytest.mark.parametrize("name,kw,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_write_nothing(tmp_path, name, kw, message):
    lm = _lm(**kw)
    with pytest.raises(ValueError, match=re.escape(message)):
        export_bamba(lm, tmp_path / "bamba")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_refusal(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    save_hf(_lm(**SWITCH), good)
    save_hf(_lm(arch="transmamba"), bad)
    assert main(["export", "--to", "bamba", str(tmp_path / "out"), "--model", str(good)]) == 0
    _same_logits(_lm(**SWITCH), tmp_path / "out")
    assert main(["export", "--to", "bamba", str(tmp_path / "out2"), "--model", str(bad)]) == 2
    assert "error: layer 1: TransPoint" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    assert main(["export", "--to", "bamba", str(tmp_path / "out"), "--model", str(good)]) == 2  # not empty
