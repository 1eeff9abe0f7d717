"""Issue 41, group 4: saved students (the Hugging Face format `save_hf` writes). A checksum manifest
is written beside every student, atomically; a damaged student (truncated, bit-flipped, bad header,
deleted weights, missing tokenizer, config that disagrees with the weights, NaN) is refused by name in
`load_model`, `from_pretrained` and the CLI (`generate`, `export`): one `error:` line, exit 2, nothing
written. A student without a manifest (older ones) still loads, with keys, shapes and finiteness checked."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from transmamba.cli import main
from transmamba.io.checkpoint import MANIFEST_FILE, read_manifest, write_manifest
from transmamba.models.lm import LM
from transmamba.hf.student import load_model, save_hf

W = "model.safetensors"


@pytest.fixture
def student(tiny_student, tmp_path):
    """A copy of the session's saved student (tests/conftest.py), to damage."""
    return Path(shutil.copytree(tiny_student.dir, tmp_path / "student"))


def _reseal(d: Path) -> None:
    """What someone who edits a student and rewrites its manifest does."""
    write_manifest(d, sorted(read_manifest(d)["files"]))


def _unseal(d: Path) -> None:
    """A student written before manifests existed."""
    (d / MANIFEST_FILE).unlink()


def _rewrite_weights(d: Path, edit) -> None:
    sd = load_file(d / W)
    edit(sd)
    save_file(sd, str(d / W), metadata={"format": "pt"})


def _truncate(d):
    data = (d / W).read_bytes()
    (d / W).write_bytes(data[: len(data) // 2])


def _flip(d):
    data = bytearray((d / W).read_bytes())
    data[-3] ^= 0x01  # a low mantissa bit of the last tensor: still finite, a different model
    (d / W).write_bytes(bytes(data))


def _bad_header(d):
    data = bytearray((d / W).read_bytes())
    data[8:20] = b"#not-json!!!"
    (d / W).write_bytes(bytes(data))


def _nan(d):
    _rewrite_weights(d, lambda sd: sd["model.blocks.1.mixer.out_proj.weight"].view(-1).__setitem__(3, float("nan")))


def _config(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **kw}))


def _extra(d):
    _rewrite_weights(d, lambda sd: sd.__setitem__("model.blocks.0.extra", torch.zeros(2)))


# (damage, seal: "keep" the manifest / "reseal" it after the damage / "none": an older student), match
CASES = {
    "truncated": (_truncate, "keep", r"student is corrupt: model.safetensors has \d+ bytes where checksums.json "
                                     r"records \d+ \(truncated"),
    "truncated-unsealed": (_truncate, "none", r"model.safetensors cannot be read: its safetensors header is damaged "
                                              r"or the file is truncated"),
    "bit-flip": (_flip, "keep", r"model.safetensors does not match its sha256 checksum"),
    "bad-header": (_bad_header, "keep", r"model.safetensors does not match its sha256 checksum"),
    "bad-header-unsealed": (_bad_header, "none", r"model.safetensors cannot be read: its safetensors header"),
    "deleted": (lambda d: (d / W).unlink(), "keep", r"student is missing model.safetensors \(listed in checksums"),
    "deleted-unsealed": (lambda d: (d / W).unlink(), "none", r"student holds no weights \(no \*.safetensors"),
    "nan": (_nan, "reseal", r"tensor 'model.blocks.1.mixer.out_proj.weight' in model.safetensors holds 1 NaN and "
                            r"0 Inf values"),
    "nan-unsealed": (_nan, "none", r"'model.blocks.1.mixer.out_proj.weight' in model.safetensors holds 1 NaN"),
    "d_model": (lambda d: _config(d, hidden_size=32), "reseal",
                r"tensor 'model.\S+' in model.safetensors has shape \(\d+, 16\), but config.json describes 2 "
                r"layers of d_model 32"),
    "d_model-edited": (lambda d: _config(d, hidden_size=32), "keep", r"student is corrupt: config.json has \d+ bytes where checksums.json"),
    "one-layer-more": (lambda d: _config(d, num_hidden_layers=3, schedule={"name": "per_layer", "P": [0, 40, 40]}),
                       "none", r"the weights lack tensor 'model.blocks.2.\S+' \(and \d+ more\); config.json "
                               r"describes 3 layers"),
    "unexpected": (_extra, "reseal", r"model.safetensors holds tensor 'model.blocks.0.extra' the model does not have"),
    "uncovered-weights": (lambda d: shutil.copy(d / W, d / "model-extra.safetensors"), "keep",
                          r"model-extra.safetensors is not covered by checksums.json"),
}


def _damage(d: Path, case: str) -> str:
    damage, seal, match = CASES[case]
    damage(d)
    if seal == "reseal":
        _reseal(d)
    elif seal == "none":
        _unseal(d)
    return match


@pytest.mark.parametrize("case", list(CASES))
def test_load_model_and_from_pretrained_refuse_a_damaged_student(student, case):
    from transformers import AutoModelForCausalLM

    match = _damage(student, case)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_model(student)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        AutoModelForCausalLM.from_pretrained(student)


def _one_error(capsys, rc):
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["truncated", "bit-flip", "bad-header-unsealed", "deleted", "nan", "d_model",
                                  "one-layer-more"])
def test_cli_generate_and_export_refuse_a_damaged_student(student, case, tmp_path, capsys):
    import re

    match = _damage(student, case)
    err = _one_error(capsys, main(["generate", "--checkpoint", str(student), "--prompt", "x",
                                   "--max-new-tokens", "2"]))
    assert re.search(match, err), err
    out = tmp_path / "bamba"
    err = _one_error(capsys, main(["export", "--to", "bamba", str(out), "--model", str(student)]))
    assert re.search(match, err) and not out.exists(), err


def test_generate_names_a_missing_tokenizer(student, capsys):
    (student / "tokenizer.json").unlink()  # listed in the manifest
    err = _one_error(capsys, main(["generate", "--checkpoint", str(student), "--prompt", "x"]))
    assert "student is missing tokenizer.json (listed in checksums.json)" in err
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        (student / f).unlink(missing_ok=True)
    _unseal(student)
    err = _one_error(capsys, main(["generate", "--checkpoint", str(student), "--prompt", "x"]))
    assert f"{student} holds no tokenizer" in err and "pass --tokenizer" in err


def test_a_student_without_manifest_still_loads(tiny_student, student):
    _unseal(student)
    idx = torch.randint(0, 300, (1, 8))
    torch.testing.assert_close(load_model(student)(idx)[0], tiny_student.lm(idx)[0], rtol=0, atol=0)


def test_save_hf_writes_a_manifest_atomically_and_keeps_other_entries(tiny_student, tmp_path):
    d, lm = tiny_student.dir, tiny_student.lm
    listed = read_manifest(d)["files"]
    assert {W, "config.json", "generation_config.json", "tokenizer.json"} <= set(listed)
    assert set(listed) == {p.name for p in d.iterdir()} - {MANIFEST_FILE}
    assert not [p for p in d.parent.iterdir() if p.name != d.name]  # no temporary left beside it
    new = Path(shutil.copytree(d, tmp_path / "s"))
    (new / "eval").mkdir()
    (new / "eval" / "report.md").write_text("old report")
    save_hf(lm, new)  # no tokenizer this time: the old tokenizer files go, eval/ stays
    assert (new / "eval" / "report.md").read_text() == "old report"
    assert not (new / "tokenizer.json").exists() and set(read_manifest(new)["files"]) == {
        W, "config.json", "generation_config.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    load_model(new)


def test_save_hf_refuses_nan_and_a_foreign_directory_writing_nothing(tiny_student, tmp_path):
    lm = tiny_student.lm
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a transmamba student"):
        save_hf(lm, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    bad = LM(lm.cfg)
    with torch.no_grad():
        bad.blocks[0].mixer.out_proj.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"tensor 'blocks.0.mixer.out_proj.weight' holds NaN/Inf"):
        save_hf(bad, tmp_path / "nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
