"""Left padding: which positions of a batch are padding, from one count per row.

A left-padded row r holds `pad[r]` padding tokens, then its real tokens. The mixers take `pad` "b"
(int64) and make the padded positions contribute nothing (keys masked on attention paths, conv
inputs and SSM inputs x zeroed), so each row's outputs at its real positions equal those of the
row alone (RoPE is relative, so a constant position shift changes no attention score).
"""

from __future__ import annotations

import torch


def check_pad(pad, batch: int, name: str = "pad") -> torch.Tensor | None:
    """None, or an integer tensor "(batch,)" of entries >= 0, returned as int64."""
    if pad is None:
        return None
    if (not isinstance(pad, torch.Tensor) or pad.is_floating_point() or pad.dtype == torch.bool
            or pad.dim() != 1 or pad.shape[0] != batch):
        got = f"shape {tuple(pad.shape)}, dtype {pad.dtype}" if isinstance(pad, torch.Tensor) else type(pad).__name__
        raise ValueError(f"{name} must be None or an integer tensor of shape ({batch},) (left-padding counts), got {got}")
    if pad.numel() and int(pad.min()) < 0:
        raise ValueError(f"{name} must be >= 0 in every row, got min {int(pad.min())}")
    return pad.long()


def padded_positions(pad: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """bool "b l": True where absolute position start + t of row r is padding (< pad[r])."""
    t = torch.arange(start, start + length, device=pad.device)
    return t[None, :] < pad[:, None]


def key_padding_mask(pad: torch.Tensor, q_start: int, q_len: int, k_len: int) -> torch.Tensor:
    """bool "b q k": False where a real query would see a padding key (keys at 0..k_len-1).

    A padding query sees every key (its output is never used, and it stays finite)."""
    q_pad = padded_positions(pad, q_start, q_len)
    k_pad = padded_positions(pad, 0, k_len)
    return ~(k_pad[:, None, :] & ~q_pad[:, :, None])
