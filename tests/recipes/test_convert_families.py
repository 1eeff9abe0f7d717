"""`transmamba convert` end to end (subclone, layered init, SSM calibration, teacher cache, distillation)
on tiny random teachers of other families, saved with the real SmolLM2 tokenizer."""

import pytest
import torch

from transmamba.hf.student import load_model
from transmamba.data.text import load_tokenizer
from tiny_fixtures import run_tiny_convert
from tiny_teachers import tiny_teacher

FAMILIES = ["llama-llama3", "qwen2", "gemma3"]  # rope scaling; q/k/v bias; norms, windows, local rope, q/k norm


@pytest.fixture(scope="module", params=FAMILIES)
def teacher_dir(request, tmp_path_factory):
    tok = load_tokenizer("smollm2")
    d = tmp_path_factory.mktemp(request.param)
    tiny_teacher(request.param, vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def run(tmp_path, teacher_dir, name, *extra):
    return run_tiny_convert(tmp_path, teacher_dir, name, *extra, transpoints="[0]")


def test_switch_and_mamba2_students_convert(tmp_path, teacher_dir):
    for name, extra in (("switch", ()), ("mamba2", ("--student.schedule", "ssm"))):
        s = run(tmp_path, teacher_dir, name, *extra)
        assert s["steps"] == 4 and all(map(torch.isfinite, torch.tensor([s["val_ppl"], s["init_val_ppl"]])))
        assert s["transpoints"] == ([0, 16] if name == "switch" else [0, 0])
        model = load_model(tmp_path / "runs" / name / "student")  # the family options survive saving
        assert model.cfg.embed_scale == (32 ** 0.5 if "gemma" in str(teacher_dir) else 1.0)
        assert model.generate(torch.randint(0, 100, (1, 5)), 3, temperature=0).shape == (1, 8)
