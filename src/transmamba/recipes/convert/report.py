"""`transmamba convert`'s report.md: its summary as the report dict of `evaluation.report_md`, the one
teacher-vs-student report `transmamba eval` writes too.

    report_dict(summary, sources, model) the report dict: title, the student and teacher paragraphs,
                                        distilled on / judged on, the table (held-out perplexity per
                                        context, out of domain, at init and after the layer-local stage,
                                        decode / cache / prefill rows), the speed note, the wall time,
                                        the TransPoint sweep, the samples, the loss curve
    write_report(out, summary, sources) out/report.md; prints its top (the table) and the samples
"""

from __future__ import annotations

from pathlib import Path

from transmamba.evaluation.report_md import (SHAKESPEARE_HELD_OUT, distilled_on_words, metric_row,
                                             out_of_domain_metric, speed_rows, speed_setup, summary_lines,
                                             write_report_md)
from transmamba.modules.schedule import ATTENTION_ONLY


def schedule_words(tp: list) -> str:
    """The student's TransPoints in words: which layers (or KV heads) keep attention, the others' P."""
    if any(isinstance(P, (list, tuple)) for P in tp):  # head-level TransPoints (recipe.keep_heads)
        per = [[(i, j, p) for j, p in enumerate(P)] if isinstance(P, (list, tuple)) else [(i, None, P)]
               for i, P in enumerate(tp)]
        flat = [x for layer in per for x in layer]
        kept = [[i, j] for i, j, p in flat if p >= ATTENTION_ONLY and j is not None]
        rest = sorted({p for _, _, p in flat if p < ATTENTION_ONLY})
        return (f"KV heads {kept} ([layer, head]) keep attention at every position; the other heads: "
                f"TransPoints {rest} (tokens before P: attention; from P on: the SSM)")
    kept = [i for i, P in enumerate(tp) if P >= ATTENTION_ONLY]
    rest = [P for P in tp if P < ATTENTION_ONLY]
    head = f"layers {kept} keep attention at every position; the other {len(rest)}: " if kept else ""
    if not rest:
        return "attention in every layer"
    if len(set(rest)) == 1:
        return head + f"TransPoint P = {rest[0]}{'' if kept else ' in every layer'} (tokens before P: attention; from P on: the SSM)"
    return head + f"TransPoints {rest} (per layer; tokens before P: attention; from P on: the SSM)"


def about(s: dict) -> list[str]:
    """The student's and the teacher's paragraphs: sizes, schedule, tokens, the lossless check."""
    local = (f"{s['local_tokens']} layer-local + " if s.get("local_tokens") else "")
    train_s = s["train_s"] + s.get("local_train_s", 0.0)
    gate = s["lossless_check"]
    return [f"Student: TransMamba-Switch, {s['student_params'] / 1e6:.1f}M parameters (teacher "
            f"{s['teacher_params'] / 1e6:.1f}M), {schedule_words(s['transpoints'])}; {local}{s['tokens']} "
            f"end-to-end distillation tokens in {train_s:.0f} s ({s.get('amp', 'none')}).",
            f"Teacher: {s['teacher']['name']} ({s['teacher']['model_type']}, {s['teacher']['params'] / 1e6:.1f}M "
            f"parameters), tokenizer of {s['tokenizer']['size']} tokens ({s['tokenizer']['setting']}); the conversion "
            f"checked lossless at {gate['seq_len']} tokens (max logit diff {gate['rel_logit_diff']:.1g} x the "
            f"logits' scale, {gate['dtype']})."]


def table_rows(s: dict) -> list[dict]:
    """Held-out perplexity per context, out of domain, at init, after the layer-local stage; speeds."""
    rows = [metric_row(f"held-out ppl, {L}-token windows", v["student"], v["teacher"], False, ".2f")
            for L, v in s["ppl_by_context"].items()]
    if s.get("out_of_domain"):
        rows.append(out_of_domain_metric(s["out_of_domain"]))
    rows.append(metric_row(f"held-out ppl at init ({s['seq_len']})", s["init_val_ppl"], None, False, ".2f"))
    if s.get("local_val_ppl"):
        rows.append(metric_row("held-out ppl after the layer-local stage", s["local_val_ppl"], None, False, ".2f"))
    return rows + speed_rows(s)


def report_dict(s: dict, sources, model: str) -> dict:
    """The report dict (`evaluation.report_md`) of a convert summary; `sources`: its data.sources
    (None: Shakespeare); `model`: where the student was saved."""
    judged = [SHAKESPEARE_HELD_OUT if not sources else "the held-out split of data.sources"]
    if s.get("out_of_domain"):
        judged.append(f"out-of-domain text: {s['out_of_domain']['what']}")
    if s.get("samples"):
        judged.append("greedy samples on eval.prompts, beside the teacher's")
    setup = speed_setup(s)
    if setup is not None:
        setup |= {"training_amp": s.get("amp", "none"), "amp_reason": s.get("amp_reason", "")}
    wall = None
    if s.get("wall_s") is not None:
        wall = {"total_s": s["wall_s"], "parts": [
            ("loading, teacher cache and first evaluation", s["setup_s"]), ("training stages", s["stages_s"]),
            ("evaluation and saving", s["eval_s"]), ("speeds and samples", s["speed_s"])]}
    return {"title": f"transmamba convert: {s['name']}", "name": s["name"], "about": about(s), "model": model,
            "teacher_name": s["teacher"]["name"], "teacher_label": s["teacher"]["name"],
            "precision": f"fp32 (perplexity, speeds and samples; training ran {s.get('amp', 'none')})",
            "distilled_on": distilled_on_words(sources), "judged_on": judged, "rows": table_rows(s),
            "speed_setup": setup, "wall": wall, "transpoint_sweep": s.get("transpoint_sweep_ppl"),
            "samples": s.get("samples"), "loss_curve": "loss_curve.png"}


def write_report(out: Path, summary: dict, sources=None) -> Path:
    """out/report.md of a convert summary (`report_dict`); its table is also printed, and the samples."""
    r = report_dict(summary, sources, str(Path(out) / "student"))
    path = write_report_md(Path(out), r)
    print("\n".join(summary_lines(r)))
    for smp in summary.get("samples", []):
        print(f"\n{smp['prompt']!r}\n  teacher: {smp['teacher']!r}\n  student: {smp['student']!r}")
    return path
