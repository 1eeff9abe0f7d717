"""`transmamba env` and the machine fields every benchmark row carries."""

import json
import sys
import types

from transmamba.cli import BENCHES, main
from transmamba.hardware.machine import cpu_model, machine_fields

MACHINE_KEYS = {"cpu", "cpu_capability", "threads", "gpu", "amp_auto"}


def test_env_json_has_the_fields(capsys):
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert MACHINE_KEYS <= set(env)
    assert env["cpu"] == cpu_model() and env["cpu"]
    assert env["fp32_matmul_gflops"] > 0 and env["bf16_matmul_gflops"] > 0 and env["bf16_over_fp32"] > 0
    assert env["amp_auto"].startswith(("none (", "bf16 (")) and env["native_bf16"] in (True, False, None)
    assert env["versions"]["torch"] and env["threads"] >= 1


def test_env_text_is_one_line_per_field(capsys):
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("cpu: ") for line in lines) and any(line.startswith("amp_auto: ") for line in lines)
    assert any(line.startswith("versions: torch ") for line in lines)


def test_bench_rows_carry_the_machine(capsys, monkeypatch):
    fake = types.ModuleType("fake_bench")
    fake.run = lambda quick=False: [{"name": "x", "L": 1, "ours_ms": 1.0, "peer_ms": 2.0, "ratio": 2.0, "cpu": "kept"}]
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setitem(BENCHES, "fake", "fake_bench")
    main(["bench", "fake", "--json", "--threads", "1"])
    row, = json.loads(capsys.readouterr().out)["results"]
    assert MACHINE_KEYS <= set(row) and row["threads"] == 1
    assert row["cpu"] == "kept"  # a row's own field wins
    assert row["amp_auto"] == machine_fields()["amp_auto"]
