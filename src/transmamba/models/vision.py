"""Vision Mamba students for TransMamba-Adapt: ViM, VMamba, PlainMamba and VideoMamba.

All four run the same block,

    h = h + MultiScanMamba(norm1(h))            (K scan orders, merged)
    h = h + fc2(gelu(fc1(norm2(h))))            (only when mlp_ratio > 0)

and differ only where their papers do:

    arch        tokens                                  scan orders (K)              head on
    vim         patches + class token in the MIDDLE,    forward, backward (2)        class token
                learned position embedding
    vmamba      patches, no position embedding          rows, cols, both reversed    mean of tokens
                (a depthwise 3x3 Conv2d before the      (SS2D cross-scan, 4)
                scans gives position information)
    plainmamba  patches + learned position embedding    snake rows, snake cols,      mean of tokens
                                                        both reversed (4), learned
                                                        direction embeddings on B
    videomamba  tubelets (Conv3d t x p x p) + class     spatial-first (t h w)        class token
                token FIRST, spatial + temporal          forward, backward (2)
                position embeddings

Simplifications (stated, not hidden): VMamba is isotropic here (one stage, no patch merging, no
out_norm, branches merged by mean); ViM, PlainMamba and VideoMamba are isotropic as in their papers.
Default norms: RMSNorm for ViM/VideoMamba, LayerNorm for VMamba/PlainMamba (as in their code).

`forward(x, return_directions=True)` also returns, per layer, the K direction features
    f_{i,k} = h_{i-1}[:, perm_k] + dir_{i,k}             "b l d_model", scan order k
(the residual stream after layer i's mixer as seen by branch k alone); TransMamba-Adapt aligns
them with the teacher's tokens put into the same order (`align_teacher_tokens`, then perm_k).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from transmamba.ops.scan_orders import (ScanOrder, plainmamba_orders, videomamba_orders,
                                           vim_orders, vmamba_orders)
from transmamba.models.vit import MLP, PatchGrid, patch_tokens  # MLP: the teacher's, so it copies in
from transmamba.modules.multiscan import MultiScanMamba
from transmamba.modules.norm import RMSNorm
from transmamba.ops.validate import check_dim, check_tensor

ARCHES = ("vim", "vmamba", "plainmamba", "videomamba")
ARCH_DEFAULTS = {
    "vim": {"norm": "rms", "mlp_ratio": 0.0, "d_conv": 4},
    "vmamba": {"norm": "layer", "mlp_ratio": 4.0, "d_conv": 3},
    "plainmamba": {"norm": "layer", "mlp_ratio": 0.0, "d_conv": 4},
    "videomamba": {"norm": "rms", "mlp_ratio": 0.0, "d_conv": 4},
}


@dataclass
class StudentConfig(PatchGrid):
    """Shape of a student; None fields take the arch's default from ARCH_DEFAULTS."""

    arch: str = "vim"
    d_model: int = 96
    depth: int = 4
    d_state: int = 16
    d_conv: int | None = None
    expand: float = 2.0
    mlp_ratio: float | None = None
    norm: str | None = None
    norm_eps: float = 1e-5
    bias: bool = False
    frames: int = 4
    tubelet: int = 1

    def __post_init__(self):
        if self.arch not in ARCHES:
            raise ValueError(f"arch must be one of {ARCHES}, got {self.arch!r}")
        for k, v in ARCH_DEFAULTS[self.arch].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        self._check_grid()
        if self.arch == "videomamba" and self.frames % self.tubelet:
            raise ValueError(f"frames={self.frames} must be divisible by tubelet={self.tubelet}")

    @property
    def d_ff(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    def to_dict(self) -> dict:
        """The fields as a student's config.json holds them: arch first, then PatchGrid's image fields
        and the rest (the order students were saved in before PatchGrid held the image fields)."""
        return {"arch": self.arch, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown student config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def make_norm(kind: str, d: int, eps: float) -> nn.Module:
    """LayerNorm or RMSNorm (both with a `weight`; LayerNorm also a `bias`)."""
    return nn.LayerNorm(d, eps=eps) if kind == "layer" else RMSNorm(d, eps=eps)


class MambaBlock(nn.Module):
    """h += mixer(norm1(h)); h += mlp(norm2(h)) when mlp_ratio > 0. Shared by every student."""

    def __init__(self, cfg: StudentConfig, orders: list[ScanOrder], **mixer_kw):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = MultiScanMamba(cfg.d_model, orders, d_state=cfg.d_state, d_conv=cfg.d_conv,
                                    expand=cfg.expand, bias=cfg.bias, **mixer_kw)
        if cfg.d_ff > 0:
            self.norm2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
            self.mlp = MLP(cfg.d_model, cfg.d_ff)
        else:
            self.norm2 = self.mlp = None

    def forward(self, h: torch.Tensor, return_directions: bool = False):
        """h "b l d" -> (h "b l d", direction features [K x "b l d"] or None)."""
        dirs = None
        if return_directions:
            m, d = self.mixer(self.norm1(h), return_directions=True)
            dirs = [h.index_select(1, self.mixer.perms[k]) + dk for k, dk in enumerate(d)]
        else:
            m = self.mixer(self.norm1(h))
        h = h + m
        if self.mlp is not None:
            h = h + self.mlp(self.norm2(h))
        return h, dirs


class VisionMamba(nn.Module):
    """Shared trunk: embed -> blocks -> norm_f -> pool -> head. Subclasses define embed/pool/orders."""

    def __init__(self, cfg: StudentConfig, orders: list[ScanOrder], **mixer_kw):
        super().__init__()
        self.cfg = cfg
        self.orders = orders
        self.blocks = nn.ModuleList(MambaBlock(cfg, orders, **mixer_kw) for _ in range(cfg.depth))
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)

    def _init_weights(self) -> None:
        """ViM-style init: trunc_normal(0.02) Linear weights, zero biases, small embeddings."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name in ("cls_token", "pos_embed", "temporal_pos"):
                nn.init.trunc_normal_(p, std=0.02)

    # subclasses: embed, pool, teacher_index / align_teacher_tokens
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_directions: bool = False):
        """logits "b classes" (and per-layer direction features [depth][K] "b l d" in scan order)."""
        h = self.embed(x)
        feats = []
        for blk in self.blocks:
            h, dirs = blk(h, return_directions)
            feats.append(dirs)
        logits = self.head(self.pool(self.norm_f(h)))
        return (logits, feats) if return_directions else logits

    def align_teacher_tokens(self, feat: torch.Tensor, n_prefix: int = 1) -> torch.Tensor:
        """Teacher tokens "b (p + h w) d" -> the student's token layout "b l d"."""
        check_tensor("feat", feat, 3, "(b, n_prefix + h*w, d)")
        check_dim("feat", feat, 1, n_prefix + self.cfg.grid ** 2,
                  f"teacher tokens (n_prefix={n_prefix} + the student's "
                  f"{self.cfg.grid}x{self.cfg.grid} patches)")
        return feat.index_select(1, self.teacher_index(n_prefix).to(feat.device))

    def teacher_index(self, n_prefix: int = 1) -> torch.Tensor:
        """Student token position -> teacher token index (0 = class token, n_prefix + j = patch j)."""
        return n_prefix + torch.arange(self.cfg.grid ** 2)

    @property
    def n_tokens(self) -> int:
        return self.orders[0].length


class ViM(VisionMamba):
    """Vision Mamba (Zhu et al. 2024): raster patches, class token in the middle, bidirectional."""

    def __init__(self, cfg: StudentConfig):
        n = cfg.grid ** 2
        super().__init__(cfg, vim_orders(n + 1))
        self.cls_pos = n // 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.d_model))
        self._init_weights()

    def embed(self, x):
        """[p_0 .. p_{m-1}, cls, p_m ..] + pos_embed, m = n // 2."""
        p = patch_tokens(self.cfg, self.patch_embed, x)
        m = self.cls_pos
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([p[:, :m], cls, p[:, m:]], dim=1) + self.pos_embed

    def pool(self, h):
        return h[:, self.cls_pos]

    def teacher_index(self, n_prefix: int = 1):
        n, m = self.cfg.grid ** 2, self.cls_pos
        patches = n_prefix + torch.arange(n)
        return torch.cat([patches[:m], torch.zeros(1, dtype=torch.long), patches[m:]])


class VMamba(VisionMamba):
    """VMamba (Liu et al. 2024) SS2D, isotropic: four-way cross-scan, depthwise 2D conv."""

    def __init__(self, cfg: StudentConfig):
        g = cfg.grid
        super().__init__(cfg, vmamba_orders(g, g), conv="2d", grid=(g, g))
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self._init_weights()

    def embed(self, x):
        return patch_tokens(self.cfg, self.patch_embed, x)

    def pool(self, h):
        return h.mean(1)


class PlainMamba(VisionMamba):
    """PlainMamba (Yang et al. 2024): four zig-zag scans with direction-aware updates on B."""

    def __init__(self, cfg: StudentConfig):
        g = cfg.grid
        super().__init__(cfg, plainmamba_orders(g, g), direction_embed=True)
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g, cfg.d_model))
        self._init_weights()

    def embed(self, x):
        return patch_tokens(self.cfg, self.patch_embed, x) + self.pos_embed

    def pool(self, h):
        return h.mean(1)


class VideoMamba(VisionMamba):
    """VideoMamba (Li et al. 2024): tubelets, class token first, spatial-first bidirectional scan."""

    def __init__(self, cfg: StudentConfig):
        g, t = cfg.grid, cfg.frames // cfg.tubelet
        super().__init__(cfg, videomamba_orders(t, g, g, n_prefix=1))
        self.t_tokens = t
        self.patch_embed = nn.Conv3d(cfg.in_chans, cfg.d_model, (cfg.tubelet, cfg.patch_size, cfg.patch_size),
                                     stride=(cfg.tubelet, cfg.patch_size, cfg.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, cfg.d_model))
        self.temporal_pos = nn.Parameter(torch.zeros(1, t, cfg.d_model))
        self._init_weights()

    def embed(self, x):
        """x "b t c H W" -> [cls + pos_0, (t' h w) tubelets + spatial pos + temporal pos]."""
        cfg = self.cfg
        cfg.check_images(x, video=True)
        p = self.patch_embed(x.transpose(1, 2))  # "b d t' h w"
        p = p.flatten(3).permute(0, 2, 3, 1)  # "b t' (h w) d"
        p = p + self.pos_embed[:, None, 1:] + self.temporal_pos[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, p.flatten(1, 2)], dim=1)

    def pool(self, h):
        return h[:, 0]

    def align_teacher_tokens(self, feat: torch.Tensor, n_prefix: int = 1) -> torch.Tensor:
        """Frame-wise teacher tokens "b t (p + h w) d" -> "b (1 + t' h w) d": class token = mean of
        the frames' class tokens; each tubelet token = mean of its frames' patch tokens."""
        cfg = self.cfg
        check_tensor("feat", feat, 4, "(b, t, n_prefix + h*w, d)")
        check_dim("feat", feat, 1, cfg.frames, "StudentConfig.frames")
        check_dim("feat", feat, 2, n_prefix + cfg.grid ** 2, "n_prefix + the student's patches")
        cls = feat[:, :, 0].mean(1, keepdim=True)
        p = feat[:, :, n_prefix:].unflatten(1, (self.t_tokens, cfg.tubelet)).mean(2)  # "b t' n d"
        return torch.cat([cls, p.flatten(1, 2)], dim=1)

    def teacher_index(self, n_prefix: int = 1):
        raise NotImplementedError("VideoMamba aligns frame-wise teacher tokens with align_teacher_tokens")


STUDENTS = {"vim": ViM, "vmamba": VMamba, "plainmamba": PlainMamba, "videomamba": VideoMamba}


def build_student(cfg: StudentConfig | dict) -> VisionMamba:
    """A student from a StudentConfig or a dict of its fields."""
    if isinstance(cfg, dict):
        cfg = StudentConfig.from_dict(cfg)
    return STUDENTS[cfg.arch](cfg)


def save_student(model: VisionMamba, out_dir, extra: dict | None = None) -> Path:
    """out_dir/model.safetensors + out_dir/config.json ({"student": cfg, **extra}) + their checksums.json,
    written atomically as one (`transmamba.io.files.save_weights_and_config`)."""
    from transmamba.io.files import save_weights_and_config

    return save_weights_and_config(out_dir, model.state_dict(), {"format": "transmamba-vision-student",
                                                                 "student": model.cfg.to_dict(), **(extra or {})})


def load_student(path) -> VisionMamba:
    """Inverse of `save_student` (its checksums.json verified first; a student saved before
    checksums has none and loads as it is)."""
    import json

    from safetensors.torch import load_file

    from transmamba.io.manifest import verify_manifest

    d = Path(path)
    verify_manifest(d)
    cfg = json.loads((d / "config.json").read_text())
    model = build_student(cfg["student"])
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["StudentConfig", "MambaBlock", "VisionMamba", "ViM", "VMamba", "PlainMamba", "VideoMamba",
           "build_student", "save_student", "load_student", "make_norm", "ARCHES"]
