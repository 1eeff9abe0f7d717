"""`transmamba bench kernels`: SSD, the Mamba-2 mixer and the Mamba-1 selective scan vs their peers.

- ssd_chunked vs ssd_ref (the sequential reference);
- our Mamba2 mixer vs Hugging Face transformers' `Mamba2Mixer` torch path, same weights;
- our selective_scan vs mambapy's parallel scan (pscan).
"""

from __future__ import annotations

from transmamba.bench import mamba2_mixer, selective_scan, ssd


def run(quick: bool = False) -> list[dict]:
    Ls = [2048] if quick else [512, 2048, 8192]
    return ssd.rows(Ls) + mamba2_mixer.rows(Ls) + selective_scan.rows(Ls)
