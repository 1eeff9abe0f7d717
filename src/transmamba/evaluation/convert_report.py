"""The teacher-vs-student report of `transmamba convert`: what it measures after training and its report.md.

    speed_and_samples(teacher, student, cfg, tok)   decoding / prefill speeds and cache sizes of both models
                                                    (medians of alternating rounds, fp32) and greedy samples
    write_report(out, summary)                      report.md: perplexity per context, speeds, the TransPoint
                                                    sweep, samples, the loss curve (the table also printed)

The measurements are `evaluation.speed`'s, the ones `transmamba bench` uses; `transmamba eval`
(`evaluation.report`) gives the longer, teacher-relative evaluation of the saved student.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transmamba.modules.schedule import ATTENTION_ONLY
from transmamba.evaluation.report import out_of_domain_line


def speed_and_samples(teacher, student, cfg, tok) -> dict:
    """Both models, fp32 (an architecture comparison: under bf16 autocast an AVX512-BF16 CPU decodes
    the HF teacher slower than in fp32 and our student faster, which would flatter the student):
    decoding ms/token and cache MB at each `eval.speed_contexts` context and
    `eval.speed_batches` batch (caches filled to its size with `eval.speed_synthetic`, else by a
    real prefill), prefill tokens/s at each `eval.prefill_contexts` length (batch 1), and greedy
    continuations. Each speed is the median of `eval.speed_rounds` rounds that alternate student
    and teacher, so that a drift of a shared machine's speed hits both alike; prefill takes
    `eval.prefill_rounds` rounds (None: as many), as one round of a long prefill is seconds long."""
    from transmamba.evaluation.speed import alternating_medians, decode_speed, teacher_decode_speed, time_ms

    ev, res = cfg["eval"], {}
    student.eval()
    contexts = ev.get("speed_contexts") or ([ev["speed_context"]] if ev.get("speed_context") else [])
    synthetic = bool(ev.get("speed_synthetic"))
    rounds, n = int(ev["speed_rounds"]), ev["speed_tokens"]
    from transmamba.hardware.machine import cpu_model

    res["speed"], res["speed_rounds"], res["speed_threads"] = [], rounds, torch.get_num_threads()
    res["cpu"] = cpu_model()
    for C in contexts:
        for B in ev.get("speed_batches") or [1]:
            kw = dict(synthetic=synthetic, batch=int(B))
            (ms_s, mb_s), (ms_t, mb_t) = alternating_medians(
                [lambda: decode_speed(student, int(C), n, warmup=1, max_s=60, **kw),
                 lambda: teacher_decode_speed(teacher, int(C), n, **kw)], rounds)
            res["speed"].append({"context": int(C), "batch": int(B), "student_tok_s": B * 1e3 / ms_s,
                                 "teacher_tok_s": B * 1e3 / ms_t, "student_cache_mb": mb_s, "teacher_cache_mb": mb_t,
                                 "synthetic_cache": synthetic})
    res["prefill"], res["prefill_rounds"] = [], int(ev.get("prefill_rounds") or rounds)
    for L in ev.get("prefill_contexts") or []:
        idx = torch.randint(0, student.cfg.vocab_size, (1, int(L)))
        with torch.no_grad():
            (t_s,), (t_t,) = alternating_medians(
                [lambda: (time_ms(lambda: student(idx), reps=1, warmup=0),),
                 lambda: (time_ms(lambda: teacher(idx, use_cache=False), reps=1, warmup=0),)], res["prefill_rounds"])
        res["prefill"].append({"context": int(L), "student_tok_s": L / t_s * 1e3, "teacher_tok_s": L / t_t * 1e3})
    samples = []
    for prompt in ev["prompts"]:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            s_out = student.generate(ids, ev["prompt_tokens"], temperature=0)
            t_out = teacher.generate(ids, max_new_tokens=ev["prompt_tokens"], do_sample=False,
                                     pad_token_id=tok.eos_token_id or 0)
        samples.append({"prompt": prompt, "teacher": tok.decode(t_out[0, ids.shape[1]:]),
                        "student": tok.decode(s_out[0, ids.shape[1]:])})
    res["samples"] = samples
    return res


def plot_transpoint_sweep(sweep: dict, png: Path, name: str) -> Path:
    """Held-out perplexity against the TransPoint P used by every layer (0 = pure SSM)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ps = sorted(sweep, key=int)
    ax.plot([int(p) for p in ps], [sweep[p] for p in ps], marker="o")
    ax.set_xlabel("TransPoint P (every layer; tokens before P use attention)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"convert {name}: quality vs TransPoint")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return png


def _schedule_words(tp: list) -> str:
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


def write_report(out: Path, s: dict) -> Path:
    """report.md: teacher vs student table (perplexity per context length, decoding and prefill
    speed), the TransPoint sweep, samples, the loss curve; the table is also printed."""
    local = (f"{s['local_tokens']} layer-local + " if s.get("local_tokens") else "")
    train_s = s["train_s"] + s.get("local_train_s", 0.0)
    lines = [f"# transmamba convert: {s['name']}", "",
             f"Student: TransMamba-Switch, {s['student_params'] / 1e6:.1f}M parameters (teacher "
             f"{s['teacher_params'] / 1e6:.1f}M), {_schedule_words(s['transpoints'])}; {local}{s['tokens']} "
             f"end-to-end distillation tokens in {train_s:.0f} s ({s.get('amp', 'none')}).", "",
             f"Teacher: {s['teacher']['name']} ({s['teacher']['model_type']}, {s['teacher']['params'] / 1e6:.1f}M "
             f"parameters), tokenizer of {s['tokenizer']['size']} tokens "
             f"({s['tokenizer']['setting']}); the conversion checked lossless at {s['lossless_check']['seq_len']} "
             f"tokens (max logit diff {s['lossless_check']['rel_logit_diff']:.1g} x the logits' scale, "
             f"{s['lossless_check']['dtype']}).", "",
             f"| metric | teacher ({s['teacher']['name']}) | student | student / teacher |", "|---|---|---|---|"]
    for L, v in s["ppl_by_context"].items():
        lines.append(f"| held-out ppl, {L}-token windows | {v['teacher']:.2f} | {v['student']:.2f} | "
                     f"{v['student'] / v['teacher']:.2f}x |")
    if s.get("out_of_domain"):
        lines.append(out_of_domain_line(s["out_of_domain"]))
    lines.append(f"| held-out ppl at init ({s['seq_len']}) | | {s['init_val_ppl']:.2f} | |")
    if s.get("local_val_ppl"):
        lines.append(f"| held-out ppl after the layer-local stage | | {s['local_val_ppl']:.2f} | |")
    for r in s.get("speed") or []:
        how = ", caches filled to size" if r.get("synthetic_cache") else ""
        b = r.get("batch", 1)
        lines += [f"| decode tok/s at {r['context']} context (batch {b}{how}) | {r['teacher_tok_s']:.1f} | "
                  f"{r['student_tok_s']:.1f} | {r['student_tok_s'] / r['teacher_tok_s']:.2f}x |",
                  f"| cache MB at {r['context']} context, batch {b} | {r['teacher_cache_mb']:.1f} | "
                  f"{r['student_cache_mb']:.1f} | "
                  f"{r['student_cache_mb'] / max(r['teacher_cache_mb'], 1e-9):.2f}x |"]
    for r in s.get("prefill") or []:
        lines.append(f"| prefill tok/s at {r['context']} (batch 1) | {r['teacher_tok_s']:.1f} | {r['student_tok_s']:.1f} | "
                     f"{r['student_tok_s'] / r['teacher_tok_s']:.2f}x |")
    if s.get("speed") or s.get("prefill"):
        rounds = s.get("speed_rounds", 1)
        prefill_rounds = s.get("prefill_rounds", rounds)
        prefill_note = f"; prefill: {prefill_rounds} round(s)" if s.get("prefill") and prefill_rounds != rounds else ""
        lines.append(f"\nSpeeds: fp32 (training ran {s.get('amp', 'none')}: {s.get('amp_reason', '')}), "
                     f"{s.get('cpu', '?')}, {s.get('speed_threads', '?')} thread(s), each the median of "
                     f"{rounds} rounds alternating student and teacher{prefill_note}.")
    if s.get("wall_s") is not None:
        lines.append(f"\nWall time {s['wall_s'] / 60:.1f} min: {s['setup_s']:.0f} s loading, teacher cache and "
                     f"first evaluation; {s['stages_s']:.0f} s training stages; {s['eval_s']:.0f} s evaluation "
                     f"and saving; {s['speed_s']:.0f} s speeds and samples.")
    n_table = len(lines)
    lines.append("")
    if s.get("transpoint_sweep_ppl"):
        lines += ["| TransPoint P (all layers) | held-out ppl |", "|---|---|"]
        lines += [f"| {p} | {v:.2f} |" for p, v in s["transpoint_sweep_ppl"].items()] + [""]
    for smp in s.get("samples", []):
        lines += [f"**{smp['prompt']}**", "", f"- teacher: {smp['teacher']!r}", f"- student: {smp['student']!r}", ""]
    if s.get("transpoint_sweep_ppl"):
        plot_transpoint_sweep(s["transpoint_sweep_ppl"], out / "transpoint_tradeoff.png", s["name"])
        lines += ["![perplexity vs TransPoint](transpoint_tradeoff.png)", ""]
    lines += ["![loss curve](loss_curve.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines[:n_table]))
    for smp in s.get("samples", []):
        print(f"\n{smp['prompt']!r}\n  teacher: {smp['teacher']!r}\n  student: {smp['student']!r}")
    return path
