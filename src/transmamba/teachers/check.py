"""`transmamba teacher check PATH` and the gate `transmamba convert` runs: is this teacher converted exactly?

    check_teacher(path) -> {"model_type", "n_params", "max_abs_logit_diff", "logit_scale", "lossless",
                            "unsupported", "seq_len", "dtype", "note", ...}
    lossless_gate(teacher, tokenizer, seq_len, name)  -> the same dict, or ValueError before any work

The config is inspected first (`teachers.families.inspect_teacher`): a teacher it refuses is
reported with the refusal in `unsupported` and never loaded. Otherwise the teacher (a local HF
directory or a GGUF file) is converted at full size (`teachers.to_switch`) and run with every
TransPoint beyond the sequence on a few random token sequences (and on real text when the teacher
has a tokenizer), in the teacher's dtype (float32).

Lossless means float32 rounding of the teacher: max |student logit - teacher logit| <=
LOSSLESS_RTOL x the logits' scale (their standard deviation over the vocabulary, the spread softmax
sees). Measured (2026-12-07): the full-size SmolLM2-135M conversion is bit-exact (0.0); the tiny
random teachers of every family stay below 2.5e-6 x their scale; one SmolLM2 down_proj scaled by
1.001 moves the logits 4.6e-3 to 3.7e-2 x the scale, and a 1.0001 scale of a tiny teacher's moves
them ~1.8e-4 x (except where a post-norm absorbs it exactly: Gemma 2/3, OLMo 2). (float64 is no
stricter: transformers' RMSNorm and RoPE compute in float32 whatever the model's dtype, so a
float64 check of an exact conversion differs by 2e-5 x the scale.) The length checked is the
caller's, extended past the shortest sliding window; a teacher exact only up to some length
(dynamic RoPE within max_position_embeddings) is checked at that length, and the result says so
in `note`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from transmamba.teachers.families import inspect_teacher
from transmamba.teachers.to_switch import full_plan, init_from_teacher, switch_config_from_teacher
from transmamba.models.lm import LM
from transmamba.modules.schedule import ATTENTION_ONLY

CHECK_TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
              "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.")
LOSSLESS_RTOL = 1e-5
PAST_WINDOW = 16  # tokens checked beyond the shortest sliding window


def convert_full_size(teacher, spec=None) -> LM:
    """The full-size Switch student of `teacher` (every unit kept), eval mode, in the teacher's dtype
    (built in it, so that nothing is rounded through float32 on the way)."""
    spec = spec or inspect_teacher(teacher.config)
    student = LM(switch_config_from_teacher(spec)).to(next(teacher.parameters()).dtype)
    init_from_teacher(student, teacher, full_plan(spec), spec=spec)
    return student.eval()


def _teacher_config(path: str | os.PathLike):
    from transmamba.io.model_dir import check_model_dir
    from transmamba.teachers.load import gguf_config

    path = Path(path)
    if str(path).endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
        return gguf_config(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{str(path)!r} is not a model directory with a config.json (or a .gguf file)")
    check_model_dir(path, weights=False)  # refuses custom code (auto_map) before transformers reads it
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=False)


@torch.no_grad()
def compare_logits(teacher, student, ids: torch.Tensor) -> tuple[float, float]:
    """(max |logit diff|, the logits' scale: the teacher's standard deviation over the vocabulary,
    averaged over positions -- what softmax sees, blind to a constant offset) with every TransPoint
    beyond ids."""
    ref = teacher(ids).logits
    ours = student(ids, transpoints=ATTENTION_ONLY)[0]
    return float((ours.to(ref.dtype) - ref).abs().max()), float(ref.double().std(-1).mean())


def check_length(spec, seq_len: int) -> tuple[int, str | None]:
    """(the length to check a teacher at, why it differs from `seq_len`, or None)."""
    windows = [ls.sliding_window for ls in spec.layers if ls.sliding_window]
    L, why = seq_len, None
    if windows and seq_len <= min(windows):
        L, why = min(windows) + PAST_WINDOW, f"extended to {min(windows) + PAST_WINDOW} tokens, past the " \
                                             f"{min(windows)}-token sliding window"
    if spec.exact_up_to and L > spec.exact_up_to:
        L, why = spec.exact_up_to, (f"checked at {spec.exact_up_to} tokens, not {seq_len}: dynamic RoPE converts "
                                    f"exactly only within max_position_embeddings={spec.exact_up_to} (past it "
                                    f"transformers rescales its RoPE table per call)")
    return L, why


@torch.no_grad()
def check_model(teacher, tokenizer=None, *, n_seqs: int = 3, seq_len: int = 64, seed: int = 0,
                rtol: float | None = None) -> dict:
    """The check on a loaded teacher (module docstring); `rtol` overrides the bound."""
    n_params = sum(p.numel() for p in teacher.parameters())
    try:
        spec = inspect_teacher(teacher.config)
    except ValueError as e:
        return {"model_type": teacher.config.model_type, "n_params": n_params, "max_abs_logit_diff": None,
                "lossless": False, "unsupported": [str(e)]}
    L, note = check_length(spec, seq_len)
    rtol = LOSSLESS_RTOL if rtol is None else rtol
    student = convert_full_size(teacher, spec)
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, spec.vocab, (n_seqs, L), generator=g)]
    if tokenizer is not None:
        text = CHECK_TEXT * (1 + L // 20)
        text_ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)[:L]])
        if text_ids.numel() and int(text_ids.max()) < spec.vocab:
            batches.append(text_ids)
    worst, scale = 0.0, 0.0
    for ids in batches:
        d, s = compare_logits(teacher, student, ids)
        worst, scale = max(worst, d), max(scale, s)
    del student
    return {"model_type": spec.model_type, "n_params": n_params, "max_abs_logit_diff": worst, "logit_scale": scale,
            "rel_logit_diff": worst / scale if scale else None, "rtol": rtol, "lossless": worst <= rtol * scale,
            "unsupported": [], "checked_sequences": sum(len(b) for b in batches), "seq_len": L,
            "dtype": str(next(teacher.parameters()).dtype).replace("torch.", ""),
            "note": note}


def lossless_gate(teacher, tokenizer, seq_len: int, name: str) -> dict:
    """`check_model` at a run's own `seq_len` (and past any sliding window); ValueError naming the
    teacher and what is not exact when the conversion is not lossless there (before any work)."""
    spec = inspect_teacher(teacher.config)  # refuses an unsupported family by name
    if spec.exact_up_to and seq_len > spec.exact_up_to:
        raise ValueError(f"teacher {name}: dynamic RoPE converts exactly only within max_position_embeddings="
                         f"{spec.exact_up_to} tokens (transformers rescales its table past it), and this run's "
                         f"data.seq_len is {seq_len}; use data.seq_len <= {spec.exact_up_to}")
    res = check_model(teacher, tokenizer, seq_len=seq_len)
    if not res["lossless"]:
        raise ValueError(f"teacher {name} ({spec.model_type}) does not convert losslessly at {res['seq_len']} tokens: "
                         f"max |logit diff| {res['max_abs_logit_diff']:.3g} = {res['rel_logit_diff']:.2g} x the "
                         f"logits' scale (bound {res['rtol']:g}, {res['dtype']}); some feature of its config or "
                         f"weights is computed differently by the student. `transmamba teacher check` reports it")
    return res


def check_teacher(path: str | os.PathLike, **kw) -> dict:
    """The check on a local HF model directory or GGUF file (module docstring)."""
    from transmamba.teachers.load import load_teacher

    config = _teacher_config(path)
    try:
        inspect_teacher(config)
    except ValueError as e:  # refused before any weight is read
        return {"model_type": getattr(config, "model_type", None), "n_params": None, "max_abs_logit_diff": None,
                "lossless": False, "unsupported": [str(e)]}
    teacher, tok = load_teacher(path, check=inspect_teacher)
    return check_model(teacher, tok, **kw)
