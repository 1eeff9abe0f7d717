"""`transmamba teacher check PATH`: is this teacher converted exactly?

    check_teacher(path) -> {"model_type", "n_params", "max_abs_logit_diff", "lossless", "unsupported"}

The config is inspected first (`adapt.hf_families.inspect_teacher`): a teacher it refuses is
reported with the refusal in `unsupported` and never loaded. Otherwise the teacher (a local HF
directory or a GGUF file) is loaded, converted at full size (`adapt.llama_to_switch`) and run with
every TransPoint beyond the sequence on a few random token sequences (and on real text when the
teacher has a tokenizer). `lossless` is true when every logit agrees within atol + rtol * |logit|
(default 1e-4 each, float32), the tolerance of the repository's lossless tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from transmamba.adapt.hf_families import inspect_teacher
from transmamba.adapt.llama_to_switch import full_plan, init_from_teacher, switch_config_from_teacher
from transmamba.models.lm import LM
from transmamba.modules.schedule import ATTENTION_ONLY

CHECK_TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
              "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.")


def convert_full_size(teacher, spec=None) -> LM:
    """The full-size Switch student of `teacher` (every unit kept), eval mode, in the teacher's dtype."""
    spec = spec or inspect_teacher(teacher.config)
    student = LM(switch_config_from_teacher(spec))
    init_from_teacher(student, teacher, full_plan(spec), spec=spec)
    return student.to(next(teacher.parameters()).dtype).eval()


def _teacher_config(path: str | os.PathLike):
    from transmamba.models.hf_llama import gguf_config

    path = Path(path)
    if str(path).endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
        return gguf_config(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{str(path)!r} is not a model directory with a config.json (or a .gguf file)")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


@torch.no_grad()
def compare_logits(teacher, student, ids: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> tuple[float, bool]:
    """(max |logit diff|, all within atol + rtol |teacher logit|) with every TransPoint beyond ids."""
    ref = teacher(ids).logits.float()
    ours = student(ids, transpoints=ATTENTION_ONLY)[0].float()
    diff = (ours - ref).abs()
    return float(diff.max()), bool((diff <= atol + rtol * ref.abs()).all())


@torch.no_grad()
def check_model(teacher, tokenizer=None, *, n_seqs: int = 3, seq_len: int = 64, seed: int = 0,
                atol: float = 1e-4, rtol: float = 1e-4) -> dict:
    """The check on a loaded teacher (module docstring)."""
    try:
        spec = inspect_teacher(teacher.config)
    except ValueError as e:
        return {"model_type": teacher.config.model_type, "n_params": sum(p.numel() for p in teacher.parameters()),
                "max_abs_logit_diff": None, "lossless": False, "unsupported": [str(e)]}
    student = convert_full_size(teacher, spec)
    L = min(seq_len, spec.exact_up_to or seq_len)
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, spec.vocab, (n_seqs, L), generator=g)]
    if tokenizer is not None:
        text_ids = torch.tensor([tokenizer.encode(CHECK_TEXT)[:L]])
        if int(text_ids.max()) < spec.vocab:
            batches.append(text_ids)
    worst, ok = 0.0, True
    for ids in batches:
        d, within = compare_logits(teacher, student, ids, atol, rtol)
        worst, ok = max(worst, d), ok and within
    return {"model_type": spec.model_type, "n_params": sum(p.numel() for p in teacher.parameters()),
            "max_abs_logit_diff": worst, "lossless": ok, "unsupported": [], "checked_sequences": sum(len(b) for b in batches),
            "seq_len": L}


def check_teacher(path: str | os.PathLike, **kw) -> dict:
    """The check on a local HF model directory or GGUF file (module docstring)."""
    from transmamba.models.hf_llama import load_teacher

    config = _teacher_config(path)
    try:
        inspect_teacher(config)
    except ValueError as e:  # refused before any weight is read
        return {"model_type": getattr(config, "model_type", None), "n_params": None, "max_abs_logit_diff": None,
                "lossless": False, "unsupported": [str(e)]}
    teacher, tok = load_teacher(path, check=inspect_teacher)
    return check_model(teacher, tok, **kw)
