"""`amp: auto`: bf16 only where the device runs it natively and fast (hardware.precision), the
probe injected; the warning on a forced slow bf16; the engine running what auto picks."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from transmamba.hardware import precision as prec
from transmamba.hardware.precision import MatmulProbe, resolve_amp

FAST = MatmulProbe(fp32_gflops=100.0, bf16_gflops=580.0)  # AMX-like: 5.8x
SLOW = MatmulProbe(fp32_gflops=35.0, bf16_gflops=0.8)  # AVX2 reference gemm: 0.023x
AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.fixture
def unpinned(monkeypatch):
    """No TRANSMAMBA_AMP pin, a fresh warn-once set."""
    monkeypatch.delenv(prec.ENV_PIN, raising=False)
    monkeypatch.setattr(prec, "_warned", set())


@pytest.fixture
def machine(monkeypatch, unpinned):
    """machine(flags, probe): make this CPU look like another (what resolve_amp reads by default)."""
    def set_(flags, probe):
        monkeypatch.setattr(prec, "cpu_flags", lambda: flags)
        monkeypatch.setattr(prec, "matmul_probe", lambda device="cpu", n=prec.PROBE_N: probe)
    return set_


@pytest.mark.parametrize("flags,probe,amp,words", [
    (AMX, FAST, "bf16", "AMX, bf16 matmul 5.8x fp32"),
    (AVX512_BF16, MatmulProbe(100.0, 230.0), "bf16", "AVX512-BF16, bf16 matmul 2.3x fp32"),
    (AVX2, SLOW, "none", "no native bf16: bf16 matmul 0.023x fp32"),
    (AVX512_BF16, SLOW, "none", "AVX512-BF16, bf16 matmul 0.023x fp32"),  # flag set, but the probe says slow
    (AMX, MatmulProbe(100.0, 120.0), "none", "bf16 matmul 1.2x fp32"),  # native but not worth it
    (None, FAST, "bf16", "bf16 matmul 5.8x fp32"),  # flags unreadable (macOS): the probe decides
    (None, SLOW, "none", "bf16 matmul 0.023x fp32"),
])
def test_auto_follows_the_flags_and_the_probe(unpinned, flags, probe, amp, words):
    p = resolve_amp("auto", "cpu", probe=probe, flags=flags)
    assert p.amp == amp and p.requested == "auto" and words in p.reason
    assert str(p) == f"{amp} ({p.reason})"


def test_none_never_probes(machine, monkeypatch):
    monkeypatch.setattr(prec, "matmul_probe", lambda *a, **k: pytest.fail("probed"))
    assert resolve_amp("none", "cpu") == prec.Precision("none", "none", "requested")


def test_forced_bf16_where_slow_runs_and_warns_once(machine):
    machine(AVX2, SLOW)
    with pytest.warns(UserWarning, match=r"amp bf16 was asked for.*AVX2.*0\.023x fp32.*auto"):
        p = resolve_amp("bf16", "cpu")
    assert p.amp == "bf16" and p.reason.startswith("requested")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_amp("bf16", "cpu").amp == "bf16"  # once per process and device
        machine(AMX, FAST)
        assert resolve_amp("bf16", "cpu", what="another").amp == "bf16"  # fast: no warning


def test_pin_and_bad_values(unpinned, monkeypatch):
    monkeypatch.setenv(prec.ENV_PIN, "bf16")
    assert str(resolve_amp("auto", "cpu", probe=SLOW, flags=AVX2)) == "bf16 (TRANSMAMBA_AMP=bf16)"
    assert resolve_amp("none", "cpu").amp == "none"  # the pin only decides auto
    monkeypatch.setenv(prec.ENV_PIN, "fp16")
    with pytest.raises(ValueError, match="TRANSMAMBA_AMP must be 'none' or 'bf16', got 'fp16'"):
        resolve_amp("auto", "cpu")
    with pytest.raises(ValueError, match="amp must be one of auto, none, bf16, got 'fp16'"):
        resolve_amp("fp16", "cpu")


def test_the_real_probe_measures_and_is_cached(unpinned):
    a = prec.matmul_probe("cpu", n=64)
    assert a.fp32_gflops > 0 and a.bf16_gflops > 0 and math.isclose(a.ratio, a.bf16_gflops / a.fp32_gflops)
    assert prec.matmul_probe("cpu", n=64) is a  # once per process and device
    torch.set_num_threads(2)
    assert prec.matmul_probe("cpu", n=64) is a and torch.get_num_threads() == 2  # one thread, restored
    assert resolve_amp("auto", "cpu").amp in ("none", "bf16")


def test_autocast_context_follows_the_resolution(machine):
    x = torch.randn(4, 4)
    machine(AMX, FAST)
    with prec.autocast("cpu", "auto"):
        assert (x @ x).dtype == torch.bfloat16
    machine(AVX2, SLOW)
    with prec.autocast("cpu", "auto"):
        assert (x @ x).dtype == torch.float32


def _lm_cfg(tmp_path, name, amp):
    V = 32
    model = {"arch": "transmamba", "vocab_size": V, "d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 8,
             "d_state": 8, "chunk_size": 8, "max_seq_len": 16, "schedule": {"name": "fixed", "P": 8}}
    tr = {"tokens": 4 * 4 * 16, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "log_every": 1,
          "eval_every": 0, "eval_batches": 1, "ckpt_every": 0, "progress": False, "amp": amp}
    return {"name": name, "out_dir": str(tmp_path / name), "device": "cpu", "seed": 5, "model": model, "train": tr}


def _train(cfg):
    import numpy as np

    from transmamba.recipes.lm import TextData, train

    ids = (np.arange(3000) % 32).astype(np.uint16)
    return train(cfg, data=TextData(ids, (np.arange(200) % 32).astype(np.uint16), 32, "synthetic"))


def test_engine_runs_what_auto_picks_and_says_why(tmp_path, machine, capsys):
    from transmamba.training.metrics import read_metrics

    out = {}
    for name, flags, probe in (("fast", AMX, FAST), ("slow", AVX2, SLOW)):
        machine(flags, probe)
        s = _train(_lm_cfg(tmp_path, name, "auto"))
        rows = read_metrics(Path(s["out_dir"]) / "metrics.csv")
        summary = json.loads((Path(s["out_dir"]) / "summary.json").read_text())
        out[name] = [r["train_loss"] for r in rows]
        assert {r["amp"] for r in rows} == {s["amp"]} and summary["amp"] == s["amp"]
        assert summary["amp_reason"] == s["amp_reason"]
    err = capsys.readouterr().err
    assert "amp: bf16 (AMX, bf16 matmul 5.8x fp32)" in err
    assert "amp: none (AVX2, no native bf16: bf16 matmul 0.023x fp32)" in err
    none = _train(_lm_cfg(tmp_path, "none", "none"))
    assert none["amp"] == "none" and none["amp_reason"] == "requested"
    fp32 = [r["train_loss"] for r in read_metrics(Path(none["out_dir"]) / "metrics.csv")]
    assert out["slow"] == fp32  # auto on a slow-bf16 CPU is exactly fp32
    assert out["fast"] != fp32 and max(abs(a - b) for a, b in zip(out["fast"], fp32)) < 0.05  # bf16 really ran


def test_engine_warns_on_a_forced_slow_bf16(tmp_path, machine):
    machine(AVX2, SLOW)
    with pytest.warns(UserWarning, match=r"amp bf16 was asked for.*0\.023x fp32"):
        s = _train(_lm_cfg(tmp_path, "forced", "bf16"))
    assert s["amp"] == "bf16" and "requested" in s["amp_reason"]


def test_loading_a_student_in_bf16_where_slow_warns(machine):
    from transmamba.hf.configuration_transmamba import TransMambaConfig
    from transmamba.hf.modeling_transmamba import TransMambaForCausalLM
    from transmamba.models.lm import LMConfig

    machine(AVX2, SLOW)
    cfg = TransMambaConfig.from_lm_config(LMConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, head_dim=8,
                                                   d_state=8, arch="transmamba"))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # what from_pretrained(dtype=torch.bfloat16) does while building
    try:
        with pytest.warns(UserWarning, match=r"a TransMamba model in bfloat16 was asked for.*0\.023x fp32"):
            TransMambaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
