"""transmamba.models.vit_weights: loading local HF / timm / our checkpoints gives the same outputs."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from transmamba.models.vit import ViT, ViTConfig, save_vit
from transmamba.models.vit_weights import load_pretrained_vit


transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            image_size=8, patch_size=4, num_channels=1)


def _hf_save(model, path):
    model.save_pretrained(path)
    return path


def test_hf_vitmodel_hidden_states_match(tmp_path):
    torch.manual_seed(0)
    hf = transformers.ViTModel(transformers.ViTConfig(**TINY), add_pooling_layer=False).eval()
    ours = load_pretrained_vit(_hf_save(hf, tmp_path / "hf"))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        _, hidden, normed = ours(x, return_hidden=True)
    torch.testing.assert_close(normed, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    for i, h in enumerate(hidden):
        torch.testing.assert_close(h, ref.hidden_states[i + 1], rtol=1e-5, atol=1e-5)


def test_hf_vit_classifier_logits_match(tmp_path):
    torch.manual_seed(1)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY, num_labels=3)).eval()
    ours = load_pretrained_vit(_hf_save(hf, tmp_path / "hfc"))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_hf_deit_with_distillation_token(tmp_path):
    torch.manual_seed(2)
    hf = transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(**TINY, num_labels=3)).eval()
    ours = load_pretrained_vit(_hf_save(hf, tmp_path / "deit"))
    assert ours.n_prefix == 2
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def _timm_reference(sd, x, heads, eps=1e-6):
    """timm VisionTransformer.forward written from its state dict (independent of our modules)."""
    d = sd["cls_token"].shape[-1]
    p = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=sd["patch_embed.proj.weight"].shape[-1])
    h = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), p.flatten(2).transpose(1, 2)], 1)
    h = h + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        g = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(h, (d,), g("norm1.weight"), g("norm1.bias"), eps)
        B, N, _ = y.shape
        qkv = (y @ g("attn.qkv.weight").t() + g("attn.qkv.bias")).reshape(B, N, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(B, N, d)
        h = h + o @ g("attn.proj.weight").t() + g("attn.proj.bias")
        y = F.layer_norm(h, (d,), g("norm2.weight"), g("norm2.bias"), eps)
        y = F.gelu(y @ g("mlp.fc1.weight").t() + g("mlp.fc1.bias"))
        h = h + y @ g("mlp.fc2.weight").t() + g("mlp.fc2.bias")
    h = F.layer_norm(h, (d,), sd["norm.weight"], sd["norm.bias"], eps)
    return h[:, 0] @ sd["head.weight"].t() + sd["head.bias"]


def test_timm_state_dict_matches_reference(tmp_path):
    torch.manual_seed(3)
    d, ff, depth, n_cls = 12, 20, 2, 4
    sd = {"cls_token": torch.randn(1, 1, d), "pos_embed": torch.randn(1, 5, d),
          "patch_embed.proj.weight": torch.randn(d, 1, 4, 4) * 0.2, "patch_embed.proj.bias": torch.randn(d),
          "norm.weight": torch.randn(d), "norm.bias": torch.randn(d),
          "head.weight": torch.randn(n_cls, d), "head.bias": torch.randn(n_cls)}
    for i in range(depth):
        for name, shape in [("norm1.weight", (d,)), ("norm1.bias", (d,)), ("attn.qkv.weight", (3 * d, d)),
                            ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)),
                            ("attn.proj.bias", (d,)), ("norm2.weight", (d,)), ("norm2.bias", (d,)),
                            ("mlp.fc1.weight", (ff, d)), ("mlp.fc1.bias", (ff,)),
                            ("mlp.fc2.weight", (d, ff)), ("mlp.fc2.bias", (d,))]:
            sd[f"blocks.{i}.{name}"] = torch.randn(*shape) * 0.3
    (tmp_path / "timm").mkdir()
    save_file(sd, str(tmp_path / "timm" / "model.safetensors"))
    (tmp_path / "timm" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_custom",
                                                               "num_heads": 3}))
    ours = load_pretrained_vit(tmp_path / "timm")
    assert ours.cfg.num_heads == 3 and ours.cfg.img_size == 8 and ours.cfg.d_ff == ff
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _timm_reference(sd, x, 3), rtol=1e-4, atol=1e-4)
    # a .bin checkpoint with the heads taken from the architecture name ("tiny" -> 3)
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch4_8"}))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained_vit(tmp_path / "bin")(x), ours(x))


def test_own_format_roundtrip_and_errors(tmp_path):
    torch.manual_seed(4)
    model = ViT(ViTConfig(img_size=8, patch_size=2, d_model=8, depth=1, num_heads=2, d_ff=16,
                          num_classes=3))
    save_vit(model, tmp_path / "t", {"note": "x"})
    assert not list((tmp_path / "t").glob("*.tmp-*"))
    again = load_pretrained_vit(tmp_path / "t")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(again(x), model(x))
    with pytest.raises(FileNotFoundError):
        load_pretrained_vit(tmp_path / "missing")
    (tmp_path / "odd").mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "odd" / "model.safetensors"))
    with pytest.raises(ValueError, match="format"):
        load_pretrained_vit(tmp_path / "odd")
    with pytest.raises(ValueError, match="x"):
        model(torch.randn(2, 3, 8, 8))
