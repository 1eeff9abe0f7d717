"""Which precision to compute in, chosen from the hardware: `amp: auto | none | bf16`.

bf16 autocast pays only where the device multiplies bf16 natively. On a CPU without native bf16
(AVX2 only, or AVX512 without its BF16 extension) torch's bf16 matmul falls back to a reference
loop ~40x slower than fp32; with AMX or AVX512-BF16 it is 2-6x faster. So `auto` is

    bf16  iff  the device has native bf16        (CUDA: compute capability >= 8.0;
                                                  CPU: the amx_bf16 / avx512_bf16 / ARM bf16 flag,
                                                  or flags unreadable, e.g. macOS)
          and  a bf16 n x n matmul runs >= MIN_BF16_SPEEDUP times the fp32 one  (the probe)
    none  otherwise

The probe (`matmul_probe`) times a 256 x 256 matmul in both dtypes on one thread (the instruction
set, not the thread pool: a 2-thread probe on a busy 2-core box once read 1.5x on a CPU whose bf16
runs at 0.02x), alternating the two and keeping the best time of each over PROBE_ROUNDS rounds, so
that a burst of load hits both alike: a few ms where both are fast, ~0.1-0.2 s where bf16 is slow
(it stops as soon as bf16 is clearly the slower). It runs once per process and device (cached).
`TRANSMAMBA_AMP=none|bf16` pins what `auto` picks (reproducible runs across machines; the test
suite pins `none`). An explicit `bf16` where the probe says it is slow still runs, with one
warning naming the measured ratio.

    p = resolve_amp("auto", torch.device("cpu"))
    p.amp     -> "bf16" | "none"  (what runs)
    str(p)    -> "bf16 (AVX512-BF16, bf16 matmul 2.3x fp32)" / "none (AVX2, no native bf16: bf16 matmul 0.02x fp32)"
    with autocast(device, "auto"): ...
"""

from __future__ import annotations

import functools
import os
import platform
import time
import warnings
from dataclasses import dataclass

import torch

AMP_CHOICES = ("auto", "none", "bf16")
MIN_BF16_SPEEDUP = 1.5  # bf16 matmul / fp32 matmul throughput at which `auto` takes bf16
PROBE_N = 256
PROBE_ROUNDS = 5
ENV_PIN = "TRANSMAMBA_AMP"

# /proc/cpuinfo flags of native bf16 arithmetic, strongest first, with the names we report
CPU_BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "ARM BF16"))


@dataclass(frozen=True)
class MatmulProbe:
    """Measured throughput of a PROBE_N x PROBE_N matmul in fp32 and bf16 (GFLOP/s)."""

    fp32_gflops: float
    bf16_gflops: float

    @property
    def ratio(self) -> float:
        """bf16 throughput / fp32 throughput (> 1: bf16 is faster)."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0


@dataclass(frozen=True)
class Precision:
    """What runs (`amp`: "bf16" or "none"), what was asked (`requested`), and why (`reason`)."""

    amp: str
    requested: str
    reason: str

    def __str__(self) -> str:
        return f"{self.amp} ({self.reason})"


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux); None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / aarch64
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> tuple[bool | None, str]:
    """(whether `device` has native bf16 arithmetic: True / False / None for unknown, the feature
    that says so: "AMX", "AVX512-BF16", "ARM BF16", "CUDA sm_90", or the CPU's capability, "AVX2")."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"CUDA sm_{major}{minor}"
    if device.type != "cpu":
        return False, device.type  # mps / xpu / ...: bf16 autocast is not used there
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None, f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    for flag, name in CPU_BF16_FLAGS:
        if flag in flags:
            return True, name
    for flag, name in (("avx512f", "AVX512"), ("avx2", "AVX2")):
        if flag in flags:
            return False, name
    return False, torch.backends.cpu.get_cpu_capability()


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@functools.cache
def _probe(device_key: str, n: int) -> MatmulProbe:
    device = torch.device(device_key)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(device), torch.randn(n, n, generator=g).to(device)
    sync = _sync(device)
    calls = [lambda x=a.to(dt), y=b.to(dt): (x @ y, sync()) for dt in (torch.float32, torch.bfloat16)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fn in calls:
            fn()  # warm-up: kernel selection, packing buffers
        best = [float("inf"), float("inf")]
        for r in range(PROBE_ROUNDS):
            best = [min(t, _seconds(fn)) for t, fn in zip(best, calls)]
            if r >= 1 and best[1] > 4 * best[0]:  # bf16 clearly the slower: no need to refine
                break
    finally:
        torch.set_num_threads(threads)
    fp32, bf16 = (2 * n**3 / max(t, 1e-9) / 1e9 for t in best)
    return MatmulProbe(fp32, bf16)


def matmul_probe(device: torch.device | str = "cpu", n: int = PROBE_N) -> MatmulProbe:
    """fp32 and bf16 matmul throughput (GFLOP/s, one thread on a CPU) on `device`, measured once per
    process and device."""
    return _probe(str(torch.device(device)), n)


_warned: set[tuple] = set()


def resolve_amp(requested: str, device: torch.device | str = "cpu", *, probe: MatmulProbe | None = None,
                flags: frozenset[str] | None = None, warn: bool = True, what: str = "amp bf16") -> Precision:
    """The precision that runs for `requested` ("auto" | "none" | "bf16") on `device`, and why.

    `probe` / `flags` replace the measurement and /proc/cpuinfo (tests). An explicit "bf16" where
    bf16 is slow warns once per process and device (a UserWarning naming `what` and the measured
    ratio); it still runs bf16."""
    if requested not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {requested!r}")
    if requested == "none":
        return Precision("none", requested, "requested")
    device = torch.device(device)
    pin = os.environ.get(ENV_PIN)
    if requested == "auto" and pin:
        if pin not in ("none", "bf16"):
            raise ValueError(f"{ENV_PIN} must be 'none' or 'bf16', got {pin!r}")
        return Precision(pin, requested, f"{ENV_PIN}={pin}")
    native, feature = native_bf16(device, flags)
    if native is False and requested == "auto":
        # no measurement needed to say no, but the ratio tells the user how much it would cost
        probe = probe or (matmul_probe(device) if device.type == "cpu" else None)
        ratio = f": bf16 matmul {probe.ratio:.2g}x fp32" if probe else ""
        return Precision("none", requested, f"{feature}, no native bf16{ratio}")
    probe = probe or matmul_probe(device)
    fast = native is not False and probe.ratio >= MIN_BF16_SPEEDUP
    words = f"{feature}, bf16 matmul {probe.ratio:.2g}x fp32"
    if requested == "auto":
        return Precision("bf16" if fast else "none", requested, words)
    if not fast and warn and (key := (what, str(device))) not in _warned:
        _warned.add(key)
        warnings.warn(f"{what} was asked for, but on this device ({words}) bf16 is slower than fp32 or barely "
                      f"faster (auto takes bf16 from {MIN_BF16_SPEEDUP}x); amp auto / float32 would be faster",
                      UserWarning, stacklevel=2)
    return Precision("bf16", requested, f"requested; {words}")


def autocast(device: torch.device | str, amp: str):
    """bf16 autocast where `amp` resolves to bf16 (`resolve_amp`), a no-op context otherwise."""
    device = torch.device(device)
    on = resolve_amp(amp, device).amp == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)
