"""What this machine is, for `transmamba env` and beside every benchmark row.

`machine_fields()`: the few fields every speed figure must carry (CPU model, torch's CPU
capability, threads, GPU, the precision `auto` picks). `environment()`: those plus the measured
fp32 / bf16 matmul throughput, the native-bf16 feature and the library versions.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

import torch

from transmamba.hardware.precision import PROBE_N, PROBE_ROUNDS, cpu_flags, matmul_probe, native_bf16, resolve_amp

LIBRARIES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "lm_eval", "numpy", "transmamba")


@functools.cache
def cpu_model() -> str:
    """The CPU's model name: lscpu's "Model name", else /proc/cpuinfo's, else platform's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and value.strip():
                return value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_fields(device: torch.device | str | None = None) -> dict:
    """{"cpu", "cpu_capability", "threads", "gpu", "amp_auto"}: what a speed figure was measured on."""
    device = default_device() if device is None else torch.device(device)
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "gpu": gpu_name(), "amp_auto": str(resolve_amp("auto", device))}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Everything `transmamba env` prints: the machine, measured matmul speeds, auto's pick, versions."""
    device = default_device()
    probe = matmul_probe(device)
    native, feature = native_bf16(device)
    flags = cpu_flags()
    out = {**machine_fields(device), "device": str(device), "cores": os.cpu_count(), "machine": platform.machine(),
           "python": platform.python_version(), "native_bf16": native, "bf16_feature": feature,
           "cpu_bf16_flags": sorted(f for f in (flags or ()) if "bf16" in f or f.startswith("amx")),
           "matmul_probe": f"{PROBE_N}x{PROBE_N}, 1 thread, best of up to {PROBE_ROUNDS} alternating rounds",
           "fp32_matmul_gflops": round(probe.fp32_gflops, 1), "bf16_matmul_gflops": round(probe.bf16_gflops, 1),
           "bf16_over_fp32": round(probe.ratio, 3), "versions": {k: _version(k.replace("_", "-")) for k in LIBRARIES}}
    if device.type == "cuda":
        out["cpu_bf16_over_fp32"] = round(matmul_probe("cpu").ratio, 3)
    return out


def format_environment(env: dict) -> str:
    """`transmamba env`'s text: one `key: value` line each."""
    lines = []
    for k, v in env.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items() if b is not None)
        elif isinstance(v, list):
            v = " ".join(v) or "(none)"
        lines.append(f"{k}: {v}")
    return "\n".join(lines)
