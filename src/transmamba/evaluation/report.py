"""`transmamba eval --model DIR [--teacher smollm2|DIR] [--suite default|quality|retrieval] [--parts A,B]
[--teacher-cache DIR] [--quick] [--out DIR] [--text PATH [--text-field F]]`.

One report of a Hugging Face-format student (`transmamba convert` / `train` write one; any local
causal-LM directory works), with the teacher side by side and "% of teacher" per metric. The
default suite runs every part below; `quality` runs perplexity (256 / 1k, 8 windows), `--text` and
generation (100 task questions); `retrieval` runs perplexity at 1k / 4k, passkey and needle at 1k-4k
(`--ret-lengths` to change) and the probe; `--parts` keeps only the named parts (PARTS). `--teacher-cache DIR` keeps the teacher's results under a key of
its weights, the suite, the precision, `--text` and this package's code, so that judging several
students against one teacher runs the teacher once.

- perplexity on held-out Shakespeare at 256 / 1k / 4k tokens, per position bucket
  (`evaluation.context_perplexity`); % of teacher = teacher ppl / student ppl;
- passkey retrieval at 1k / 2k / 4k / 8k tokens and 5 depths, needle-in-a-haystack in the
  held-out works (`evaluation.long_context`), 10 trials per (length, depth), heat maps
  passkey.png / needle.png;
- the retrieval probe (`evaluation.retrieval_probe`: key-value lookup and passkey, teacher-forced
  greedy accuracy) at 1k / 2k tokens, 5 depths x 2 trials;
- for each of those, per length: accuracy with its 95% Wilson interval and "pct of teacher"
  (student acc / teacher acc, none when the teacher scores 0): report.md's "Retrieval" table and
  results.json's `retrieval` rows (and `pct_of_teacher` per cell in the student's grids);
- lm-eval-harness tasks made from the shipped data (`evaluation.lm_eval_tasks`: tm_cloze,
  tm_nextline), through lm-eval's Python API on the transformers model;
- `--text PATH` (a text file or glob, or a JSONL file with `--text-field`, read by `data/sources.py`
  and tokenized by each model's tokenizer): perplexity of student and teacher on that held-out text,
  per position bucket, with the ratio student ppl / teacher ppl (report.md "Held-out text");
- generation against the teacher (`evaluation.generation`): greedy continuations of plain and
  chat-templated prompts compared with the teacher's at 32 and 128 new tokens (prefix and positional
  agreement, exact-match rate), and a generative task built offline (2-digit addition, copy/recall)
  scored by exact match, each with its 95% Wilson interval and pct of teacher;
- which data the student was distilled on (its transmamba_run.json: the run config's data section)
  and which it is judged on (`distilled_on`, `judged_on` in results.json, at the top of report.md);
- speed (`evaluation.hf_speed`): prefill tok/s at 1k / 4k, decode ms/token and cache MB at
  1k / 4k / 16k (caches filled to size with random contents: a step's cost depends on the cache's
  size, not its contents, and the teacher's 16k prefill would take minutes).

The default suite took 13.6 minutes on a 2-core CPU for the 145M demo student and its teacher;
results.json keeps the seconds each part took (`seconds`). That was with 1 trial x 3 depths per
retrieval length; the 10 trials x 5 depths now run ~17x as many passkey and needle prompts (not yet
timed on the demo student).

Teacher and student go through the same functions (both as transformers models), in the same
precision: `--amp auto` (the default) runs bf16 autocast where this machine computes bf16 natively
and faster than fp32 (`transmamba.hardware.precision`), fp32 elsewhere; `none` / `bf16` force one.
results.json and report.md say which ran and why (`precision`). The speed rows run both models in
fp32 whatever `--amp` says: they compare architectures, and under bf16 autocast an AVX512-BF16 CPU
decodes the HF teacher slower than in fp32 (91 vs 79 ms/token at 2k, SmolLM2) while our student
decodes faster, which would flatter the student. `--quick` runs
tiny lengths and few documents (for tests). Written to --out (default DIR/eval): report.md,
results.json, the PNGs. report.md is `evaluation.report_md`'s, the one teacher-vs-student report
`transmamba convert` writes too (`write_report` turns these results into its report dict).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from transmamba.evaluation.report_md import (SHAKESPEARE_HELD_OUT, distilled_on_words, metric_row,
                                              write_report_md)

PARTS = ("perplexity", "text", "generation", "passkey", "needle", "probe", "lm_eval", "speed")
_DEFAULT = dict(ppl_lengths=[256, 1024, 4096], ppl_windows=2, ret_lengths=[1024, 2048, 4096, 8192],
                depths=[0.0, 0.25, 0.5, 0.75, 1.0], ret_trials=10, probe_lengths=[1024, 2048], probe_trials=2,
                lm_eval_limit=100, lm_eval_batch=16, speed_contexts=[1024, 4096, 16384],
                prefill_lengths=[1024, 4096], decode_tokens=8, synthetic_decode=True,
                text_windows=8, gen_lengths=[32, 128], gen_plain=12, gen_chat=6, gen_task=40, gen_task_tokens=12,
                parts=PARTS)
SUITES = {
    "default": _DEFAULT,
    # what a user judges a student on besides retrieval: likelihood in and out of domain, and generation
    "quality": _DEFAULT | dict(ppl_lengths=[256, 1024], ppl_windows=8, gen_task=100,
                               parts=("perplexity", "text", "generation")),
    # long-context retrieval (issue 38's table): passkey / needle at 1k-4k, the probe, perplexity at 1k / 4k
    "retrieval": _DEFAULT | dict(ppl_lengths=[1024, 4096], ret_lengths=[1024, 2048, 4096],
                                 parts=("perplexity", "passkey", "needle", "probe")),
    "quick": dict(ppl_lengths=[32, 64], ppl_windows=1, ret_lengths=[48, 96], depths=[0.0, 0.5, 1.0], ret_trials=1,
                  probe_lengths=[96], probe_trials=1,
                  lm_eval_limit=4, lm_eval_batch=2, speed_contexts=[16, 32], prefill_lengths=[32], decode_tokens=2,
                  synthetic_decode=True, text_windows=1, gen_lengths=[4, 8], gen_plain=2, gen_chat=1, gen_task=4,
                  gen_task_tokens=6, parts=PARTS),
}


def load_hf_model(path: str, cache_dir: str = "cache/teachers/smollm2"):
    """(model, tokenizer) of a local transformers model directory, or the SmolLM2 teacher by name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transmamba  # noqa: F401  (registers model_type "transmamba")
    from transmamba.io.model_dir import check_model_dir

    if path == "smollm2":
        from transmamba.teachers.load import load_teacher

        model, tok = load_teacher("smollm2")  # (model in eval mode, its tokenizer)
        return model.eval(), tok
    p = check_hf_dir(path)
    from transmamba.hf.student import is_hf_dir

    if is_hf_dir(p):  # checked (checksums, weights vs config, NaN) by our class's from_pretrained
        from transmamba.hf import TransMambaForCausalLM

        model = TransMambaForCausalLM.from_pretrained(str(p)).eval()
    else:
        check_model_dir(p)  # no custom code, no pickle weights, intact files
        model = AutoModelForCausalLM.from_pretrained(str(p), trust_remote_code=False, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)


def check_hf_dir(path: str) -> Path:
    """`path` as a model directory with a config.json and a tokenizer, that asks to run no code of
    its own (ValueError otherwise, before transformers reads anything)."""
    from transmamba.io.model_dir import refuse_custom_code

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"{path} is not a model directory (no config.json); for an old-format checkpoint run "
                         f"transmamba.hf.student.convert_to_hf first")
    refuse_custom_code(p)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ValueError(f"{path} holds no tokenizer (save it with the model)")
    return p


def text_source(path: str, field: str | None = None) -> dict:
    """The `data/sources.py` spec of `--text`: a JSONL file (or glob) with `field` (default "text"),
    else text files by glob; all of it held out (heldout 1: judged on, never trained on here)."""
    if path.endswith((".jsonl", ".json")):
        return {"jsonl": path, "field": field or "text", "heldout": 1.0}
    if field is not None:
        raise ValueError(f"--text-field applies to a JSONL --text, not {path!r}")
    return {"files": path, "heldout": 1.0}


def text_ids(spec: dict, tok, cache_dir: str = "cache/text"):
    """The `--text` token stream (documents joined by the separator), tokenized once and cached."""
    import numpy as np

    from transmamba.data.sources import mixture_ids

    return np.asarray(mixture_ids([spec], tok, "val", cache_dir))


def text_lengths(suite: dict, ids, spec: dict) -> list[int]:
    """The suite's perplexity lengths that fit the `--text` stream (ValueError when none does)."""
    lengths = [L for L in suite["ppl_lengths"] if L + 1 <= len(ids)]
    if not lengths:
        what = spec.get("files") or spec.get("jsonl")
        raise ValueError(f"--text {what!r} has {len(ids)} tokens, fewer than one window of "
                         f"{min(suite['ppl_lengths']) + 1}")
    return lengths


def distilled_on(model_dir: str) -> str:
    """What the student was distilled on, from its transmamba_run.json (the run config's data section)."""
    from transmamba.hf.student import RUN_INFO

    p = Path(model_dir) / RUN_INFO
    if not p.is_file():
        return f"unknown (no {RUN_INFO} beside the model)"
    try:
        info = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return f"unknown ({RUN_INFO} unreadable)"
    data = None
    for key in ("convert", "config"):
        if isinstance(info.get(key), dict) and isinstance(info[key].get("data"), dict):
            data = info[key]["data"]
            break
    if data is None:
        return f"unknown (no data section in {RUN_INFO})"
    return distilled_on_words(data.get("sources"))


def out_of_domain_row(student, teacher, tok, *, seq_len: int, batch_size: int, n_batches: int) -> dict:
    """The out-of-domain row of convert's report: held-out perplexity of our student (an `LM`) and its HF
    teacher on text in neither split of the training data (`data.ood_text`: software licences),
    same windows for both: {"what", "seq_len", "student", "teacher", "tokens"}."""
    from transmamba.data.ood_text import ood_ids
    from transmamba.evaluation.perplexity import hf_perplexity, lm_perplexity

    what, ids = ood_ids(tok)
    kw = dict(batch_size=batch_size, seq_len=seq_len, n_batches=n_batches)
    st, te = lm_perplexity(student, ids, **kw), hf_perplexity(teacher, ids, **kw)
    return {"what": what, "seq_len": seq_len, "student": st["val_ppl"], "teacher": te["val_ppl"],
            "tokens": st["val_tokens"]}


def evaluate_model(model, tok, suite: dict, work: Path, texts: list[str], text_spec=None,
                   cache_dir: str = "cache/text") -> dict:
    """Every metric of the suite for one transformers model (`text_spec`: the `--text` data source)."""
    from transmamba.evaluation.context_perplexity import bucketed_perplexity
    from transmamba.evaluation.hf_speed import hf_speed
    from transmamba.evaluation.lm_eval_tasks import run_lm_eval, write_tasks
    from transmamba.evaluation.long_context import retrieval_grid

    import numpy as np

    seconds = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        return out

    parts = suite["parts"]
    text = "\n".join(texts)
    res = {}
    if "perplexity" in parts:
        ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"])
        res["perplexity"] = timed("perplexity", lambda: bucketed_perplexity(
            lambda x: model(x).logits, ids, suite["ppl_lengths"], n_windows=suite["ppl_windows"]))
    if text_spec is not None and "text" in parts:
        tids = text_ids(text_spec, tok, cache_dir)
        res["text_perplexity"] = timed("text_perplexity", lambda: bucketed_perplexity(
            lambda x: model(x).logits, tids, text_lengths(suite, tids, text_spec), n_windows=suite["text_windows"]))
    from transmamba.data.text import tokenizer_key
    from transmamba.evaluation.generation import run_generation

    res["tokenizer_key"] = tokenizer_key(tok)
    if "generation" in parts:
        res["generation"] = timed("generation", lambda: run_generation(
            model, tok, lengths=suite["gen_lengths"], n_plain=suite["gen_plain"], n_chat=suite["gen_chat"],
            n_task=suite["gen_task"], task_tokens=suite["gen_task_tokens"]))

    def answer(prompt, n):
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=pad,
                             attention_mask=torch.ones_like(prompt))
        return out[0, prompt.shape[1]:]

    for kind in ("passkey", "needle"):
        if kind in parts:
            res[kind] = timed(kind, lambda: retrieval_grid(answer, tok, kind, suite["ret_lengths"], suite["depths"],
                                                           haystack=text[:200000], trials=suite["ret_trials"]))
    from transmamba.evaluation.retrieval_probe import probe_items, score_probe

    if "probe" in parts:
        res["probe"] = timed("probe", lambda: score_probe(
            lambda x: model(x).logits, probe_items(tok, lengths=suite["probe_lengths"], depths=suite["depths"],
                                                   trials=suite["probe_trials"])))
    if "lm_eval" in parts:
        task_dir = write_tasks(work / "lm_eval_tasks", texts, n=max(suite["lm_eval_limit"], 20))
        res["lm_eval"] = timed("lm_eval", lambda: run_lm_eval(model, tok, task_dir, limit=suite["lm_eval_limit"],
                                                              batch_size=suite["lm_eval_batch"]))
    if "speed" in parts:
        with torch.autocast("cpu", enabled=False):  # speeds in fp32 for both models (module docstring)
            res["speed"] = timed("speed", lambda: hf_speed(model, suite["speed_contexts"],
                                                           prefill_lengths=suite["prefill_lengths"],
                                                           n_tokens=suite["decode_tokens"],
                                                           synthetic=suite["synthetic_decode"]))
    res["seconds"] = seconds
    return json.loads(json.dumps(res, default=str))  # as results.json (and a cached teacher) hold it: str keys


def flat_metrics(r: dict) -> dict:
    """name -> (value, higher_is_better)."""
    out = {}
    for L, p in r.get("perplexity", {}).items():
        out[f"ppl@{L}"] = (p["ppl"], False)
        for b, v in p["buckets"].items():
            out[f"ppl@{L}[{b}]"] = (v, False)
    for L, p in r.get("text_perplexity", {}).items():
        out[f"text_ppl@{L}"] = (p["ppl"], False)
        for b, v in p["buckets"].items():
            out[f"text_ppl@{L}[{b}]"] = (v, False)
    for kind in ("passkey", "needle"):
        acc = r.get(kind, {}).get("acc", [])
        for L, row in zip(r.get(kind, {}).get("lengths", []), acc):
            out[f"{kind}@{L}"] = (sum(row) / len(row), True)
    for kind, p in r.get("probe", {}).items():
        for row in p["by_length"]:
            out[f"probe_{kind}@{row['length']}"] = (row["acc"], True)
    for task, ms in r.get("lm_eval", {}).items():
        for k, v in ms.items():
            out[f"{task}.{k}"] = (v, k != "perplexity")
    sp = r.get("speed", {"prefill": {}, "decode": {}})
    for L, v in sp["prefill"].items():
        out[f"prefill_tok_s@{L}"] = (v, True)
    for C, d in sp["decode"].items():
        out[f"decode_ms@{C}"] = (d["ms_per_token"], False)
        out[f"cache_mb@{C}"] = (d["cache_mb"], False)
    return out


def retrieval_rows(s: dict, t: dict | None) -> list[dict]:
    """Per task and length: {"task", "length", "student": {acc, ci, hits, n}, "teacher": ... | None,
    "pct_of_teacher"} for passkey, needle and the probe's tasks (accuracy with its 95% interval)."""
    from transmamba.evaluation.intervals import pct_of_teacher as pct

    def by_length(r, kind):
        if kind.startswith("probe_"):
            return {row["length"]: row for row in r.get("probe", {}).get(kind[6:], {}).get("by_length", [])}
        return {row["length"]: row for row in r.get(kind, {}).get("by_length", [])}

    kinds = ["passkey", "needle"] + [f"probe_{k}" for k in s.get("probe", {})]
    rows = []
    for kind in kinds:
        tb = by_length(t, kind) if t else {}
        for L, row in by_length(s, kind).items():
            keep = lambda r: {k: r[k] for k in ("acc", "ci", "hits", "n")}  # noqa: E731
            tr = tb.get(L)
            rows.append({"task": kind, "length": L, "student": keep(row), "teacher": keep(tr) if tr else None,
                         "pct_of_teacher": pct(row["acc"], tr["acc"]) if tr else None})
    return rows


def text_rows(s: dict, t: dict | None) -> list[dict]:
    """Per length and bucket of the `--text` perplexity: {"length", "bucket", "student", "teacher",
    "ratio" = student ppl / teacher ppl (1 = as good as the teacher; None without a teacher)}."""
    rows = []
    for L, p in s.get("text_perplexity", {}).items():
        tp = (t or {}).get("text_perplexity", {}).get(L)
        for b, v in [("all", p["ppl"]), *p["buckets"].items()]:
            tv = None if tp is None else (tp["ppl"] if b == "all" else tp["buckets"].get(b))
            rows.append({"length": int(L), "bucket": b, "student": v, "teacher": tv,
                         "ratio": None if not tv else v / tv})
    return rows


def generation_rows(s: dict, t: dict | None) -> dict:
    """`compare_generation` of the student's generation with the teacher's: greedy agreement only
    where both tokenizers are the same, the task's exact matches (text) in any case."""
    from transmamba.evaluation.generation import compare_generation

    same_tok = t is not None and "generation" in t and t.get("tokenizer_key") == s.get("tokenizer_key")
    rows = compare_generation(s["generation"], t["generation"] if same_tok else None)
    if t is not None and "generation" in t and not same_tok:  # task answers are text: still comparable
        rows["task"] = compare_generation(s["generation"], t["generation"])["task"]
    return rows


def eval_report(results: dict, rows: list[dict], speed_setup: dict | None) -> dict:
    """The report dict (`evaluation.report_md`'s schema) of `run_eval`'s results, once `write_report`
    has added the table's rows and the retrieval, text and generation comparisons to them."""
    s, t = results["student"], results.get("teacher")
    teacher = results.get("teacher_name")
    return {"title": f"Evaluation of {results['model']}", "model": results["model"], "suite": results["suite"],
            "teacher_name": teacher, "teacher_label": Path(str(teacher)).name if teacher else None,
            "precision": results.get("precision", "none"), "distilled_on": results.get("distilled_on", "unknown"),
            "judged_on": results.get("judged_on", [SHAKESPEARE_HELD_OUT]), "rows": rows, "speed_setup": speed_setup,
            "seconds": {who: r["seconds"] for who, r in (("student", s), ("teacher", t)) if r is not None},
            "retrieval": results["retrieval"], "text": results.get("text"),
            "text_perplexity": results["text_perplexity"], "generation": results.get("generation"),
            "heat_maps": [{"kind": kind, "who": who, "grid": r[kind]} for who, r in (("student", s), ("teacher", t))
                          if r is not None for kind in ("passkey", "needle") if kind in r]}


def write_report(out: Path, results: dict) -> Path:
    """report.md (`report_md.write_report_md`) and results.json of `run_eval`'s results, to which it
    adds "table" (metric -> student, teacher, pct_of_teacher, higher_is_better), "retrieval",
    "text_perplexity" and "generation"."""
    s, t = results["student"], results.get("teacher")
    fs, ft = flat_metrics(s), (flat_metrics(t) if t else {})
    rows = [metric_row(name, v, ft.get(name, (None, hib))[0], hib) for name, (v, hib) in fs.items()]
    results["table"] = {r["metric"]: {k: r[k] for k in ("student", "teacher", "pct_of_teacher", "higher_is_better")}
                        for r in rows}
    if t is not None:  # "% of teacher" per cell of the retrieval grids
        from transmamba.evaluation.long_context import compare_to_teacher

        for kind in ("passkey", "needle"):
            if "by_length" in s.get(kind, {}) and "by_length" in t.get(kind, {}):
                s[kind] = compare_to_teacher(s[kind], t[kind])
    results["retrieval"] = retrieval_rows(s, t)
    results["text_perplexity"] = text_rows(s, t)
    if "generation" in s:
        results["generation"] = generation_rows(s, t)
    setup = results.get("speed_setup")
    if setup is not None and results.get("teacher_results_from"):
        setup = setup | {"teacher_from": results["teacher_results_from"]}
    path = write_report_md(out, eval_report(results, rows, setup))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return path


def suite_spec(suite: str, quick: bool = False, parts: str | None = None, ret_lengths: list[int] | None = None) -> dict:
    """The settings of a named suite (`quick`: its parts at the tiny lengths), restricted to `parts`
    (comma-separated names of PARTS) when given, with passkey / needle at `ret_lengths` when given;
    ValueError naming a bad suite, part or length."""
    if suite not in SUITES or suite == "quick":
        raise ValueError(f"--suite must be one of {[k for k in SUITES if k != 'quick']}, got {suite!r}")
    spec = SUITES["quick"] | {"parts": SUITES[suite]["parts"]} if quick else dict(SUITES[suite])
    if parts is not None:
        names = [p.strip() for p in parts.split(",") if p.strip()]
        bad = [p for p in names if p not in PARTS]
        if bad or not names:
            raise ValueError(f"--parts: {bad or parts!r} not among {list(PARTS)}")
        spec["parts"] = tuple(p for p in PARTS if p in names)
    if ret_lengths is not None:
        if not ret_lengths or any(isinstance(L, bool) or not isinstance(L, int) or L < 16 for L in ret_lengths):
            raise ValueError(f"--ret-lengths must be integers >= 16, got {ret_lengths!r}")
        spec["ret_lengths"] = sorted(set(ret_lengths))
    return spec


def teacher_results_key(model, spec: dict, precision: str, text_spec, text_tokens) -> str:
    """What a teacher's results depend on: its weights (every byte), the suite's settings, the
    precision it computes in ("bf16" / "none", not the words saying why, which carry a measured speed
    ratio), the `--text` stream, and the evaluation code (every file of this package)."""
    import hashlib

    from transmamba.teachers.sample import teacher_hash

    h = hashlib.sha1()
    h.update(json.dumps({"weights": teacher_hash(model), "spec": spec, "precision": precision, "text": text_spec,
                         "torch": torch.__version__}, sort_keys=True, default=str).encode())
    if text_tokens is not None:
        h.update(text_tokens.tobytes())
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:20]


def run_eval(model_dir: str, teacher: str | None = None, suite: str = "default", quick: bool = False,
             out: str | None = None, amp: str = "auto", text: str | None = None, text_field: str | None = None,
             cache_dir: str = "cache/text", parts: str | None = None, teacher_cache: str | None = None,
             ret_lengths: list[int] | None = None) -> dict:
    """Evaluate the student (and the teacher) and write the report; returns results.json's content.
    `teacher_cache`: a directory where the teacher's results are kept under `teacher_results_key`
    and reused (judging several students against one teacher runs the teacher once)."""
    from transmamba.data.text import split_texts
    from transmamba.hardware.precision import autocast, resolve_amp
    from transmamba.io.files import save_json_atomic

    spec = suite_spec(suite, quick, parts, ret_lengths)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    device = torch.device("cpu")
    precision = resolve_amp(amp, device)
    out_dir = Path(out) if out else Path(model_dir) / "eval"
    if teacher and teacher != "smollm2":
        check_hf_dir(teacher)  # a teacher asking to run its own code is refused before any work
    model, tok = load_hf_model(model_dir)  # checked and loaded before anything is written
    tspec = None
    if text is not None:  # bad or too short text is refused before any work
        tspec = text_source(text, text_field)
        text_lengths(spec, text_ids(tspec, tok, cache_dir), tspec)
    elif text_field is not None:
        raise ValueError("--text-field needs --text")
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = split_texts("val")
    judged = [SHAKESPEARE_HELD_OUT] + ([f"--text {text}"] if text else []) + [
        "greedy generation on built-in prompts and an offline addition / copy task (evaluation/generation.py)"]
    results = {"model": str(model_dir), "suite": "quick" if quick else suite, "parts": list(spec["parts"]),
               "teacher_name": teacher, "precision": str(precision), "distilled_on": distilled_on(model_dir),
               "judged_on": judged, "text": text}
    with autocast(device, precision.amp):
        results["student"] = evaluate_model(model, tok, spec, out_dir, texts, tspec, cache_dir)
    if "speed" in spec["parts"]:  # the machine the speeds were measured on (report.md's speed note)
        from transmamba.hardware.machine import cpu_model

        results["speed_setup"] = {"cpu": cpu_model(), "threads": torch.get_num_threads()}
    if teacher:
        tmodel, ttok = load_hf_model(teacher)
        cached = None
        if teacher_cache is not None:
            tt = text_ids(tspec, ttok, cache_dir) if tspec is not None else None
            cached = Path(teacher_cache) / f"teacher-{teacher_results_key(tmodel, spec, precision.amp, tspec, tt)}.json"
        if cached is not None and cached.is_file():
            results["teacher"] = json.loads(cached.read_text())
            results["teacher_results_from"] = str(cached)
        else:
            with autocast(device, precision.amp):
                results["teacher"] = evaluate_model(tmodel, ttok, spec, out_dir, texts, tspec, cache_dir)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_json_atomic(results["teacher"], cached)
    write_report(out_dir, results)
    return results


def eval_main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="transmamba eval", allow_abbrev=False,
                                description="Teacher-relative evaluation of a Hugging Face-format student.")
    p.add_argument("--model", required=True, help="the student's directory (Hugging Face format)")
    p.add_argument("--teacher", default=None, help="smollm2 or a local transformers model directory")
    p.add_argument("--suite", default="default", help="default | quality (perplexity, --text, generation) | "
                   "retrieval (passkey, needle, probe and perplexity at 1k-4k)")
    p.add_argument("--parts", default=None, help=f"only these parts of the suite, comma-separated: {','.join(PARTS)}")
    p.add_argument("--teacher-cache", default=None,
                   help="directory where the teacher's results are kept and reused (keyed by its weights, "
                        "the suite, the precision, --text and the evaluation code)")
    p.add_argument("--quick", action="store_true", help="tiny lengths and few documents (tests)")
    p.add_argument("--out", default=None, help="output directory (default MODEL/eval)")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"],
                   help="auto: bf16 where this machine runs it fast (transmamba env), else fp32")
    p.add_argument("--text", default=None, help="held-out text to judge on: a text file or glob, or a JSONL file")
    p.add_argument("--text-field", default=None, help="the JSONL field holding the text (default: text)")
    p.add_argument("--cache-dir", default="cache/text", help="where --text is tokenized once (content-hashed)")
    p.add_argument("--ret-lengths", type=int, nargs="+", default=None,
                   help="passkey / needle context lengths instead of the suite's")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    res = run_eval(args.model, args.teacher, args.suite, args.quick, args.out, amp=args.amp, text=args.text,
                   text_field=args.text_field, cache_dir=args.cache_dir, parts=args.parts,
                   teacher_cache=args.teacher_cache, ret_lengths=args.ret_lengths)
    print(Path(args.out or Path(args.model) / "eval") / "report.md")
    return res
