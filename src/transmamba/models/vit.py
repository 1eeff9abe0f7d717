"""The Transformer teacher of TransMamba-Adapt: a plain pre-norm ViT (optionally with DeiT's
distillation token) that also runs frame by frame on video.

    tokens = [cls, (dist), patch_embed(x)] + pos_embed              "b (p + h w) d"
    block:  h = h + o_proj(MHSA(norm1(h)));  h = h + fc2(gelu(fc1(norm2(h))))
    logits = head(norm(h)[:, 0])           (DeiT: (head(cls) + head_dist(dist)) / 2)

Video ("b t c H W"): each frame goes through the same ViT; logits are averaged over frames and
hidden states come back as "b t (p + h w) d".

Parameter names follow the new Hugging Face ViT (q_proj, k_proj, v_proj, o_proj, mlp.fc1/fc2).
`save_vit` writes our format (config.json + model.safetensors + checksums.json, atomically as one); `transmamba.models.vit_weights`
reads it back, and Hugging Face / timm checkpoints.
`PatchGrid` and `patch_tokens` (the image geometry) are shared with the vision students.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.io.files import save_weights_and_config
from transmamba.ops.validate import check_dim, check_tensor

FORMAT = "transmamba-vit"  # config.json["format"] of `save_vit` directories


@dataclass
class PatchGrid:
    """Image geometry shared by `ViTConfig` and the students' `StudentConfig` (their first fields):
    in_chans x img_size x img_size images cut into a grid x grid raster of patch_size patches, and
    the num_classes of the head that classifies them."""

    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10

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
    """Shape of a ViT teacher (after PatchGrid's image fields). d_ff is the MLP hidden width;
    distilled adds DeiT's token."""

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

    def forward(self, x: torch.Tensor, stats: dict | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x "b l d" -> "b l d"; fills stats["q"], ["k"] "b l h e" and ["heads"] (per-head output).
        mask: bool "l l", True where query i may attend to key j (None: every pair)."""
        q, k, v = (p(x).unflatten(-1, (self.num_heads, self.d_head)).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # "b h l e"
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # "b h l e"
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

    def forward(self, h: torch.Tensor, stats: dict | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if stats is not None:
            stats["norm1_in"] = h
        h = h + self.attn(self.norm1(h), stats, mask)
        if stats is not None:
            stats["norm2_in"] = h
        return h + self.mlp(self.norm2(h), stats)


def window_mask(grid: int, window: int, n_prefix: int) -> torch.Tensor:
    """Attention mask "l l" (True: query i may attend to key j), l = n_prefix + grid^2, for a ViT on
    a grid x grid raster of patches cut into (grid / window)^2 tiles of window x window patches:
    a patch token sees only the patch tokens of its own tile (not the prefix tokens, which carry
    the whole image after one block), so its hidden states depend on its tile's pixels alone; the
    prefix tokens (class, distillation) see every token."""
    if window <= 0 or grid % window:
        raise ValueError(f"window={window} must be a positive divisor of the patch grid ({grid} x {grid})")
    r = torch.arange(grid * grid)
    tile = (r // grid // window) * (grid // window) + (r % grid) // window
    mask = torch.ones(n_prefix + grid * grid, n_prefix + grid * grid, dtype=torch.bool)
    mask[n_prefix:, :n_prefix] = False
    mask[n_prefix:, n_prefix:] = tile[:, None] == tile[None, :]
    return mask


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

    def forward(self, x: torch.Tensor, return_hidden: bool = False, stats: list | None = None, window: int = 0):
        """logits, plus the block outputs (before the final norm) and the normed last layer if
        return_hidden: (logits, [h_1..h_L], norm(h_L)). Video input returns per-frame hidden
        states "b t n d" and frame-averaged logits. `stats`, a list, receives one dict per block
        (see `calibration_stats`). window > 0: every block's attention is `window_mask` (patch
        tokens see only their own window x window tile; a local teacher for distillation)."""
        video = x.dim() == 5
        if video:
            b, t = x.shape[:2]
            x = x.flatten(0, 1)
        h = self.embed(x)
        mask = window_mask(self.cfg.grid, window, self.n_prefix).to(h.device) if window else None
        hidden = []
        for blk in self.blocks:
            s = {} if stats is not None else None
            h = blk(h, s, mask)
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


def save_vit(model: ViT, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write out_dir/model.safetensors, out_dir/config.json ({"format", "vit", **extra}) and their
    checksums.json atomically as one (`transmamba.io.files.save_weights_and_config`)."""
    return save_weights_and_config(out_dir, model.state_dict(), {"format": FORMAT, "vit": asdict(model.cfg),
                                                                 **(extra or {})})
