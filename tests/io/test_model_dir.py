"""Issue 42: a model directory's own code never runs. A directory whose config asks for custom code
(`auto_map`, ...) is refused by name before any transformers call, also when "y" is typed at
transformers' "run the custom code?" prompt; pickle-only weights are refused; every CLI path says so
in one `error:` line and exits 2, and the directory's Python file (which writes a marker file when
imported) never runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_fixtures import tiny_llama

from transmamba.io.model_dir import UnsafeModelError, check_model_dir, refuse_custom_code, refuse_pickle_weights

EXE = Path(sys.executable).with_name("transmamba")
CLI = [str(EXE)] if EXE.is_file() else [sys.executable, "-m", "transmamba.cli"]
EVIL = ("from pathlib import Path\n"
        "Path({marker!r}).write_text('the directory ran its own code')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}


def _message(d) -> str:
    return f"{d} asks to run its own code (auto_map in config.json); transmamba never runs model code"


def _add_evil(d: Path, marker: Path, **config) -> Path:
    (d / "evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **config, "auto_map": AUTO_MAP}))
    return d


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_student):
    """An auto_map teacher (model_type unknown to transformers: it would prompt), a student with
    auto_map (model_type transmamba: a copy of the session's saved student, tests/conftest.py) and an
    intact student (that one, read only), both with a tokenizer, and a tiny convert config."""
    root = tmp_path_factory.mktemp("model_dir")
    marker = root / "MARKER"
    tok = tiny_student.tok
    teacher = root / "evil_teacher"
    tiny_llama(vocab_size=len(tok)).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    _add_evil(teacher, marker, model_type="evil")
    shutil.copytree(tiny_student.dir, root / "evil_student")
    _add_evil(root / "evil_student", marker)
    (root / "student.yaml").write_text("student: {n_layers: 2, d_model: 24, n_heads: 2, n_kv_heads: 1, d_ff: 32}\n")
    return {"root": root, "marker": marker, "teacher": teacher, "student": tiny_student.dir,
            "evil_student": root / "evil_student", "config": root / "student.yaml"}


@pytest.fixture(autouse=True)
def _no_marker(request):
    if "dirs" in request.fixturenames:
        request.getfixturevalue("dirs")["marker"].unlink(missing_ok=True)


def _cli(dirs, *argv):
    env = {**os.environ, "HF_MODULES_CACHE": str(dirs["root"] / "hf_modules"), "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([*CLI, *map(str, argv)], input="y\n", capture_output=True, text=True, timeout=120,
                          cwd=dirs["root"], env=env)


def _refused(dirs, r, d):
    assert not dirs["marker"].exists(), "the directory's Python file ran"
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == f"error: {_message(d)}\n", r.stderr
    assert "custom code" not in r.stdout and "[y/N]" not in r.stdout + r.stderr  # transformers never asked


def test_teacher_check_refuses_auto_map(dirs):
    _refused(dirs, _cli(dirs, "teacher", "check", dirs["teacher"]), dirs["teacher"])


def test_convert_refuses_an_auto_map_teacher_before_any_work(dirs):
    r = _cli(dirs, "convert", "--teacher", dirs["teacher"], "--student", dirs["config"], "--quiet",
             "--out_dir", dirs["root"] / "runs")
    _refused(dirs, r, dirs["teacher"])
    assert not (dirs["root"] / "runs").exists()


def test_eval_refuses_an_auto_map_teacher_before_any_work(dirs):
    out = dirs["root"] / "eval_out"
    r = _cli(dirs, "eval", "--model", dirs["student"], "--teacher", dirs["teacher"], "--quick", "--out", out)
    _refused(dirs, r, dirs["teacher"])
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["generate", "--checkpoint", "{d}", "--prompt", "x", "--max-new-tokens", "2"],
    ["eval", "--model", "{d}", "--quick", "--out", "{root}/eval_student"],
    ["export", "--to", "bamba", "{root}/exported", "--model", "{d}"],
], ids=["generate", "eval", "export"])
def test_cli_refuses_an_auto_map_student(dirs, argv):
    d = dirs["evil_student"]
    r = _cli(dirs, *[a.format(d=d, root=dirs["root"]) for a in argv])
    _refused(dirs, r, d)
    assert not (dirs["root"] / "exported").exists() and not (dirs["root"] / "eval_student").exists()


def test_automodel_refuses_an_auto_map_student_after_import_transmamba(dirs):
    """AutoConfig picks our registered class for model_type "transmamba" without prompting (checked
    here too); AutoModelForCausalLM then reaches TransMambaForCausalLM.from_pretrained, which refuses."""
    d = dirs["evil_student"]
    code = ("import sys, transmamba\n"
            "from transformers import AutoConfig, AutoModelForCausalLM\n"
            "from transmamba.hf import TransMambaConfig\n"
            f"d = {str(d)!r}\n"
            "assert type(AutoConfig.from_pretrained(d)) is TransMambaConfig\n"
            "try:\n    AutoModelForCausalLM.from_pretrained(d)\n"
            "except ValueError as e:\n    print('REFUSED', e)\n    sys.exit(0)\n"
            "print('LOADED')\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(dirs["root"] / "hf_modules")}
    r = subprocess.run([sys.executable, "-c", code], input="y\n", capture_output=True, text=True, timeout=120,
                       env=env)
    assert not dirs["marker"].exists()
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"REFUSED {_message(d)}\n" and "[y/N]" not in r.stdout + r.stderr


def test_refuse_custom_code_names_the_field_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    refuse_custom_code(tmp_path)  # nothing to refuse
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["t.T", None]}}))
    with pytest.raises(UnsafeModelError, match=r"\(auto_map in tokenizer_config.json\); transmamba never runs"):
        refuse_custom_code(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "custom_pipelines": {}}))
    with pytest.raises(UnsafeModelError, match=r"\(custom_pipelines in config.json\)"):
        refuse_custom_code(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "custom_generate").mkdir()
    with pytest.raises(UnsafeModelError, match=r"\(custom_generate/ folder\)"):
        refuse_custom_code(tmp_path)


def test_a_gguf_path_is_checked_in_its_folder(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": AUTO_MAP}))
    with pytest.raises(UnsafeModelError, match="auto_map in config.json"):
        check_model_dir(tmp_path / "m.gguf")


def test_pickle_only_weights_are_refused(tmp_path):
    from transmamba.teachers.load import load_teacher

    d = tmp_path / "pickled"
    m = tiny_llama()
    m.config.save_pretrained(d)
    torch.save(m.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match=r"pickled holds its weights only as pickle \(pytorch_model.bin\)"):
        load_teacher(d)
    m.save_pretrained(d)  # safetensors beside it: those are read
    refuse_pickle_weights(d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        load_teacher(d)

