"""Reading ViT teachers from local checkpoints: ours, Hugging Face ViT/DeiT and timm. Nothing is downloaded.

`load_pretrained_vit` reads our own format (config.json "format": "transmamba-vit" +
model.safetensors, written by `save_vit`), HF ViT/DeiT (`save_pretrained` directories, legacy
`encoder.layer.i.attention.attention.query` names or the new `layers.i.attention.q_proj` ones)
and timm ViT/DeiT state dicts (`blocks.i.attn.qkv`, split into q, k, v), converting names to the
`transmamba.models.vit.ViT` ones.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from transmamba.io.manifest import verify_manifest
from transmamba.models.vit import FORMAT, ViT, ViTConfig


def _read_weights(d: Path) -> dict:
    for name in ("model.safetensors", "pytorch_model.safetensors"):
        if (d / name).is_file():
            return load_file(str(d / name))
    for name in ("pytorch_model.bin", "model.pth", "model.pt"):
        if (d / name).is_file():
            sd = torch.load(d / name, map_location="cpu", weights_only=True)
            return sd.get("model", sd) if isinstance(sd, dict) else sd
    raise FileNotFoundError(f"no weights (model.safetensors / pytorch_model.bin) in {d}")


_HF_LAYER = [  # (legacy name, new name, ours), inside layer i
    ("attention.attention.query", "attention.q_proj", "attn.q_proj"),
    ("attention.attention.key", "attention.k_proj", "attn.k_proj"),
    ("attention.attention.value", "attention.v_proj", "attn.v_proj"),
    ("attention.output.dense", "attention.o_proj", "attn.o_proj"),
    ("intermediate.dense", "mlp.fc1", "mlp.fc1"),
    ("output.dense", "mlp.fc2", "mlp.fc2"),
    ("layernorm_before", "layernorm_before", "norm1"),
    ("layernorm_after", "layernorm_after", "norm2"),
]
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
           "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
           "classifier.weight": "head.weight", "classifier.bias": "head.bias",
           "cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
           "distillation_classifier.weight": "head_dist.weight",
           "distillation_classifier.bias": "head_dist.bias"}


def convert_hf_vit_state_dict(sd: dict) -> dict:
    """HF ViT/DeiT state dict (legacy or new parameter names, with or without the `vit.`/`deit.`
    prefix) -> our names. The pooler is dropped (classification uses the normed class token)."""
    out = {}
    for key, t in sd.items():
        k = re.sub(r"^(vit|deit)\.", "", key)
        if k.startswith("pooler."):
            continue
        if k in _HF_TOP:
            out[_HF_TOP[k]] = t
            continue
        m = re.match(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m is None:
            raise ValueError(f"unexpected tensor {key!r} in a Hugging Face ViT checkpoint")
        i, name, kind = m.groups()
        for legacy, new, ours in _HF_LAYER:
            if name in (legacy, new):
                out[f"blocks.{i}.{ours}.{kind}"] = t
                break
        else:
            raise ValueError(f"unexpected tensor {key!r} in a Hugging Face ViT checkpoint")
    return out


def hf_vit_config(cfg: dict, sd: dict) -> ViTConfig:
    """ViTConfig from an HF config.json (hidden_size, num_hidden_layers, num_attention_heads, ...)."""
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"only hidden_act='gelu' is supported, got {cfg.get('hidden_act')!r}")
    n_cls = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    return ViTConfig(img_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 16),
                     in_chans=cfg.get("num_channels", 3), num_classes=n_cls,
                     d_model=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
                     num_heads=cfg["num_attention_heads"], d_ff=cfg["intermediate_size"],
                     qkv_bias=cfg.get("qkv_bias", True), norm_eps=cfg.get("layer_norm_eps", 1e-12),
                     distilled="dist_token" in sd)


_TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}


def convert_timm_vit_state_dict(sd: dict) -> dict:
    """timm VisionTransformer / DeiT state dict -> our names (qkv split into q, k, v)."""
    out = {}
    for key, t in sd.items():
        if key in ("cls_token", "dist_token", "pos_embed"):
            out[key] = t
        elif key.startswith("patch_embed.proj."):
            out["patch_embed." + key.rsplit(".", 1)[1]] = t
        elif key.startswith(("norm.", "head.", "head_dist.")):
            out[key] = t
        elif (m := re.match(r"^blocks\.(\d+)\.(.+)$", key)) is not None:
            i, rest = m.groups()
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                    out[f"blocks.{i}.attn.{name}.{kind}"] = part.clone()
            elif rest.startswith("attn.proj."):
                out[f"blocks.{i}.attn.o_proj.{rest.rsplit('.', 1)[1]}"] = t
            elif rest.split(".")[0] in ("norm1", "norm2") or rest.startswith("mlp.fc"):
                out[f"blocks.{i}.{rest}"] = t
            else:
                raise ValueError(f"unsupported tensor {key!r} in a timm ViT checkpoint "
                                 "(layer scale / extra modules are not supported)")
        else:
            raise ValueError(f"unsupported tensor {key!r} in a timm ViT checkpoint "
                             "(fc_norm / register tokens are not supported)")
    return out


def timm_vit_config(cfg: dict, sd: dict, num_heads: int | None = None) -> ViTConfig:
    """ViTConfig inferred from timm tensor shapes; heads from `num_heads`, config.json
    ("num_heads" or the size word in "architecture", e.g. vit_small_*), else d_model // 64."""
    w = sd["patch_embed.weight"]
    d, in_chans, p = w.shape[0], w.shape[1], w.shape[2]
    n_prefix = 2 if "dist_token" in sd else 1
    n_patch = sd["pos_embed"].shape[1] - n_prefix
    grid = math.isqrt(n_patch)
    if grid * grid != n_patch:
        raise ValueError(f"pos_embed has {n_patch} patch positions, not a square grid")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    heads = num_heads or cfg.get("num_heads")
    arch = cfg.get("architecture", cfg.get("model_name", ""))
    if heads is None:
        for word, h in _TIMM_HEADS.items():
            if f"_{word}_" in f"_{arch}_":
                heads = h
                break
    heads = heads or max(1, d // 64)
    return ViTConfig(img_size=grid * p, patch_size=p, in_chans=in_chans,
                     num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
                     d_model=d, depth=depth, num_heads=heads,
                     d_ff=sd["blocks.0.mlp.fc1.weight"].shape[0],
                     qkv_bias="blocks.0.attn.q_proj.bias" in sd,
                     norm_eps=cfg.get("norm_eps", 1e-6), distilled="dist_token" in sd)


def load_pretrained_vit(path: str | os.PathLike, num_heads: int | None = None) -> ViT:
    """A ViT from a local directory: ours (config.json "format": "transmamba-vit"), Hugging Face
    (config.json "model_type" vit/deit) or timm (blocks.i.attn.qkv tensors). No downloads."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"teacher checkpoint directory not found: {d}")
    verify_manifest(d)  # ours carry checksums.json (save_vit); others have none: nothing checked
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    sd = _read_weights(d)
    if cfg.get("format") == FORMAT:
        vcfg = ViTConfig.from_dict(cfg["vit"])
    elif cfg.get("model_type") in ("vit", "deit"):
        sd = convert_hf_vit_state_dict(sd)
        vcfg = hf_vit_config(cfg, sd)
    elif any(k.startswith("blocks.") and ".attn.qkv." in k for k in sd):
        sd = convert_timm_vit_state_dict(sd)
        vcfg = timm_vit_config(cfg, sd, num_heads)
    else:
        raise ValueError(f"{d}: cannot tell the checkpoint format (no transmamba/HF config.json and "
                         "no timm-style blocks.i.attn.qkv tensors)")
    model = ViT(vcfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k.startswith("head") and vcfg.num_classes == 0)]
    if missing or unexpected:
        raise ValueError(f"{d}: checkpoint does not fit the ViT: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model
