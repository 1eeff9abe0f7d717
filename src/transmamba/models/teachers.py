"""Transformer teachers for TransMamba-Adapt: a plain pre-norm ViT (optionally DeiT's distillation
token) that also runs frame by frame on video, with loaders for local Hugging Face and timm
checkpoints. Nothing is downloaded.

    tokens = [cls, (dist), patch_embed(x)] + pos_embed              "b (p + h w) d"
    block:  h = h + o_proj(MHSA(norm1(h)));  h = h + fc2(gelu(fc1(norm2(h))))
    logits = head(norm(h)[:, 0])           (DeiT: (head(cls) + head_dist(dist)) / 2)

Video ("b t c H W"): each frame goes through the same ViT; logits are averaged over frames and
hidden states come back as "b t (p + h w) d".

Parameter names follow the new Hugging Face ViT (q_proj, k_proj, v_proj, o_proj, mlp.fc1/fc2);
`load_pretrained_vit` reads our own format (config.json + model.safetensors), HF ViT/DeiT
(`save_pretrained` directories, legacy `encoder.layer.i.attention.attention.query` names or the
new `layers.i.attention.q_proj` ones) and timm ViT/DeiT state dicts (`blocks.i.attn.qkv`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from transmamba.ops.validate import check_dim, check_tensor

FORMAT = "transmamba-vit"


class PatchGrid:
    """Image geometry shared by `ViTConfig` and the students' `StudentConfig`: in_chans x img_size x
    img_size images cut into a grid x grid raster of patch_size patches. A dataclass mixin (no fields)."""

    def _check_grid(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} must be divisible by patch_size={self.patch_size}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    def check_images(self, x, video: bool = False) -> None:
        """x is images "b c H W" (video: clips "b t c H W" of self.frames frames) of this shape."""
        cfg = type(self).__name__
        if video:
            check_tensor("x", x, 5, "(b, t, c, H, W)")
            check_dim("x", x, 1, self.frames, f"{cfg}.frames")
        else:
            check_tensor("x", x, 4, "(b, c, H, W)")
        c = x.dim() - 3
        check_dim("x", x, c, self.in_chans, f"{cfg}.in_chans")
        check_dim("x", x, c + 1, self.img_size, f"{cfg}.img_size")
        check_dim("x", x, c + 2, self.img_size, f"{cfg}.img_size")


def patch_tokens(cfg: PatchGrid, patch_embed: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images "b c H W" (checked against cfg) -> patch tokens "b (h w) d" in raster order."""
    cfg.check_images(x)
    return patch_embed(x).flatten(2).transpose(1, 2)


@dataclass
class ViTConfig(PatchGrid):
    """Shape of a ViT teacher. d_ff is the MLP hidden width; distilled adds DeiT's token."""

    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    d_model: int = 128
    depth: int = 6
    num_heads: int = 4
    d_ff: int = 256
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    distilled: bool = False

    def __post_init__(self):
        self._check_grid()
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")

    @property
    def n_prefix(self) -> int:
        return 2 if self.distilled else 1

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Attention(nn.Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(d_head)) V per head, then o_proj."""

    def __init__(self, d_model: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.d_head = num_heads, d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.o_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
        """x "b l d" -> "b l d"; fills stats["q"], ["k"] "b l h e" and ["heads"] (per-head output)."""
        q, k, v = (p(x).unflatten(-1, (self.num_heads, self.d_head)).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # "b h l e"
        o = F.scaled_dot_product_attention(q, k, v)  # "b h l e"
        if stats is not None:
            stats["q"], stats["k"], stats["heads"] = (t.transpose(1, 2) for t in (q, k, o))
        return self.o_proj(o.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    """fc2(gelu(fc1(x)))."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        if stats is not None:
            stats["neurons"] = h
        return self.fc2(h)


class TeacherBlock(nn.Module):
    """Pre-norm transformer block: h += attn(norm1(h)); h += mlp(norm2(h))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff)

    def forward(self, h: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
        if stats is not None:
            stats["norm1_in"] = h
        h = h + self.attn(self.norm1(h), stats)
        if stats is not None:
            stats["norm2_in"] = h
        return h + self.mlp(self.norm2(h), stats)


class ViT(nn.Module):
    """Image ViT "b c H W" -> logits "b classes"; frame-wise on video "b t c H W"."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.patch_embed = nn.Conv2d(cfg.in_chans, d, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.distilled else None
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.n_prefix + cfg.grid ** 2, d) * 0.02)
        self.blocks = nn.ModuleList(TeacherBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.head = nn.Linear(d, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.head_dist = (nn.Linear(d, cfg.num_classes) if cfg.distilled and cfg.num_classes > 0
                          else None)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.normal_(self.dist_token, std=0.02)

    @property
    def n_prefix(self) -> int:
        return self.cfg.n_prefix

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images "b c H W" -> tokens "b (p + h w) d" with position embeddings added."""
        p = patch_tokens(self.cfg, self.patch_embed, x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        return torch.cat(prefix + [p], dim=1) + self.pos_embed

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.head_dist is not None:
            return (self.head(h[:, 0]) + self.head_dist(h[:, 1])) / 2
        return self.head(h[:, 0])

    def forward(self, x: torch.Tensor, return_hidden: bool = False, stats: list | None = None):
        """logits, plus the block outputs (before the final norm) and the normed last layer if
        return_hidden: (logits, [h_1..h_L], norm(h_L)). Video input returns per-frame hidden
        states "b t n d" and frame-averaged logits. `stats`, a list, receives one dict per block
        (see `calibration_stats`)."""
        video = x.dim() == 5
        if video:
            b, t = x.shape[:2]
            x = x.flatten(0, 1)
        h = self.embed(x)
        hidden = []
        for blk in self.blocks:
            s = {} if stats is not None else None
            h = blk(h, s)
            if stats is not None:
                stats.append(s)
            hidden.append(h)
        if stats is not None:
            stats.append({"final_norm_in": h})
        out = self.norm(h)
        logits = self._logits(out)
        if video:
            logits = logits.unflatten(0, (b, t)).mean(1)
            hidden = [hh.unflatten(0, (b, t)) for hh in hidden]
            out = out.unflatten(0, (b, t))
        return (logits, hidden, out) if return_hidden else logits

    @torch.no_grad()
    def calibration_stats(self, x: torch.Tensor) -> dict:
        """Activation statistics of one calibration batch, for weight subcloning.

        resid   "d"        mean_{tokens} |h_d| over every block input and the final residual
                           (ONE ranking of the residual dims shared by all layers)
        heads   "L H"      mean_{tokens} ||o_{h}||_2, the per-head attention output norm
        qk      "L H e"    mean_{tokens} |q_e| * mean_{tokens} |k_e| per head dim
        neurons "L F"      mean_{tokens} |gelu(fc1 h)_f|
        norm_inputs        {"blocks.i.norm1" | "blocks.i.norm2" | "norm": "tokens d"} inputs of
                           each LayerNorm (to rescale norms cut to fewer dims)
        """
        stats: list = []
        was = self.training
        self.eval()
        self.forward(x, stats=stats)
        self.train(was)
        resid_terms, heads, qk, neurons, norm_inputs = [], [], [], [], {}
        for i, s in enumerate(stats[:-1]):
            resid_terms.append(s["norm1_in"].abs().flatten(0, -2).mean(0))
            heads.append(s["heads"].norm(dim=-1).flatten(0, 1).mean(0))
            qk.append(s["q"].abs().flatten(0, 1).mean(0) * s["k"].abs().flatten(0, 1).mean(0))
            neurons.append(s["neurons"].abs().flatten(0, -2).mean(0))
            norm_inputs[f"blocks.{i}.norm1"] = s["norm1_in"].flatten(0, -2)
            norm_inputs[f"blocks.{i}.norm2"] = s["norm2_in"].flatten(0, -2)
        final = stats[-1]["final_norm_in"].flatten(0, -2)
        resid_terms.append(final.abs().mean(0))
        norm_inputs["norm"] = final
        return {"resid": torch.stack(resid_terms).mean(0), "heads": torch.stack(heads),
                "qk": torch.stack(qk), "neurons": torch.stack(neurons), "norm_inputs": norm_inputs}


# ---------------------------------------------------------------------------------------------
# saving and loading


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """save_file into a temporary sibling, then os.replace onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_json_atomic(obj: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, json.dumps(obj, indent=2).encode())
    return path


def save_vit(model: ViT, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write out_dir/model.safetensors and out_dir/config.json ({"format", "vit", **extra}) atomically."""
    out = Path(out_dir)
    save_safetensors_atomic(model.state_dict(), out / "model.safetensors")
    save_json_atomic({"format": FORMAT, "vit": asdict(model.cfg), **(extra or {})}, out / "config.json")
    return out


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
