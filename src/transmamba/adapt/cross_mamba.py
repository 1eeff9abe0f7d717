"""cross-Mamba: a selective-scan mixer over visual tokens made language-aware by a text sequence.

Visual branch (Mamba-1, one direction):
    x, z = split(in_proj(v));  x = silu(conv(x));  dt, B, C = split(x_proj(x))
    y = selective_scan(x, softplus(dt_proj(dt) + dt_bias), A, B, C, D);  out = out_proj(y * silu(z))

Two ways to condition it on text tokens "b m d_text" (`mode`):

  "modulate"  s = masked mean of the text tokens "b d_text";  [dB, dC, ddt] = W_mod s
              B_t <- B_t + dB,  C_t <- C_t + dC,  dt_t <- dt_t + ddt   (before the softplus)
              W_mod starts at zero, so at init the module is the plain visual mixer.
  "prefix"    the text, projected to d_model (text_proj), is scanned first by the same mixer; its
              final SSM state and its last d_conv-1 conv inputs start the visual scan:
              h_0^{vis} = h_m^{text}.  Equals scanning concat(text_proj(text), v) and keeping the
              visual outputs (tested). Padded text (text_mask) is scanned row group by row group,
              each with only its real tokens, so padding never enters the state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.modules.ssm_mixer import sample_dt_bias
from transmamba.ops.conv1d import causal_conv1d
from transmamba.ops.selective_scan import selective_scan
from transmamba.ops.validate import check_dim, check_tensor

MODES = ("modulate", "prefix")


class CrossMamba(nn.Module):
    """Visual tokens "b l d_model" + text tokens "b m d_text" -> "b l d_model"."""

    def __init__(self, d_model: int, d_text: int, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2, mode: str = "modulate", dt_rank: int | str = "auto"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.d_model, self.d_text = mode, d_model, d_text
        self.d_inner, self.d_state = int(expand * d_model), d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        di, n, r = self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        bound = d_conv ** -0.5
        self.conv_weight = nn.Parameter(torch.empty(di, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(di).uniform_(-bound, bound))
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di)
        with torch.no_grad():
            self.dt_proj.bias.copy_(sample_dt_bias(di, 0.001, 0.1, 1e-4))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32).repeat(di, 1)))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)
        if mode == "modulate":
            self.text_mod = nn.Linear(d_text, 2 * n + di)
            nn.init.zeros_(self.text_mod.weight)
            nn.init.zeros_(self.text_mod.bias)
        else:
            self.text_proj = nn.Linear(d_text, d_model)

    def _scan(self, u, *, mod=None, conv_state=None, ssm_state=None, final=False):
        """The Mamba-1 branch on u "b l d_model"; mod = (dB "b n", dC "b n", ddt "b d_inner")."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        xc = causal_conv1d(x, self.conv_weight, self.conv_bias, initial_state=conv_state,
                           return_final_state=final, activation="silu")
        if final:
            xc, conv_final = xc
        r, n = self.dt_rank, self.d_state
        dt, B, C = torch.split(self.x_proj(xc), [r, n, n], dim=-1)
        pre = self.dt_proj(dt)
        if mod is not None:
            dB, dC, ddt = mod
            B, C, pre = B + dB[:, None], C + dC[:, None], pre + ddt[:, None]
        y = selective_scan(xc, F.softplus(pre), -torch.exp(self.A_log), B.contiguous(), C.contiguous(),
                           D=self.D, initial_state=ssm_state, return_final_state=final)
        if final:
            y, h = y
        out = self.out_proj(y * F.silu(z))
        return (out, conv_final, h) if final else out

    def text_summary(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """s = sum_j mask_j text_j / sum_j mask_j: "b m d_text" -> "b d_text"."""
        if text_mask is None:
            return text.mean(1)
        m = text_mask.to(text.dtype)[..., None]
        return (text * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, v: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None):
        check_tensor("v", v, 3, "(b, l, d_model)")
        check_dim("v", v, 2, self.d_model, "d_model")
        check_tensor("text", text, 3, "(b, m, d_text)")
        check_dim("text", text, 0, v.shape[0], "v batch")
        check_dim("text", text, 2, self.d_text, "d_text")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text_mask must have shape {tuple(text.shape[:2])}, "
                             f"got {tuple(text_mask.shape)}")
        if self.mode == "modulate":
            mod = self.text_mod(self.text_summary(text, text_mask))
            n = self.d_state
            return self._scan(v, mod=(mod[:, :n], mod[:, n:2 * n], mod[:, 2 * n:]))
        if text_mask is None or bool(text_mask.bool().all()):
            return self._prefix(v, text)
        keep = text_mask.bool()
        if not bool(keep.any(1).all()):
            raise ValueError("mode='prefix' needs at least one real text token per row (text_mask)")
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        text = text.gather(1, order[..., None].expand_as(text))
        lengths = keep.sum(1)
        out = v.new_empty(v.shape)
        for m in lengths.unique().tolist():  # one scan per text length: no padding in the state
            rows = torch.nonzero(lengths == m).squeeze(1)
            out[rows] = self._prefix(v[rows], text[rows, :m])
        return out

    def _prefix(self, v: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scan unpadded text "b m d_text", then the visual tokens from its final conv and SSM state."""
        _, conv_state, h = self._scan(self.text_proj(text), final=True)
        return self._scan(v, conv_state=conv_state, ssm_state=h)

    def forward_concat_ref(self, v: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Reference for mode="prefix": scan concat(text_proj(text), v) in one go, keep the last l outputs."""
        u = torch.cat([self.text_proj(text), v], dim=1)
        return self._scan(u)[:, text.shape[1]:]
