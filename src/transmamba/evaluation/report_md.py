"""The one report.md of a student judged against its teacher: `transmamba eval` and `transmamba convert`
both write it with `write_report_md`, from a report dict of one schema.

Each key feeds one section function; a section whose key is absent (or empty) is left out:

    title, about        "# title", then the paragraphs of `about` (convert: the student and the teacher)
    model, suite, teacher_name, precision
                        the settings line (`suite` only where there is one)       `header_lines`
    distilled_on        what the student was distilled on (`distilled_on_words`)   `header_lines`
    judged_on           [what it is judged on]                                     `header_lines`
    teacher_label, rows the main table: | metric | student | teacher (label) | student / teacher |
                        % of teacher |, one `metric_row` a line                    `table_lines`
    speed_setup         {cpu, threads, rounds, prefill_rounds, training_amp, amp_reason, teacher_from}:
                        the note under the table on how the speeds were measured   `speed_note_lines`
    wall, seconds       the run's wall time in parts {total_s, parts: [[what, s]]}; seconds per part of
                        each model {who: {part: s}}                                `timing_lines`
    retrieval           accuracy rows with 95% Wilson intervals (`evaluation.report.retrieval_rows`)
    text, text_perplexity   the held-out text and its rows by position bucket (`report.text_rows`)
    generation          `evaluation.generation.compare_generation`'s rows
    name, transpoint_sweep  {P: held-out ppl} as a table and transpoint_tradeoff.png
    samples             [{prompt, teacher, student}] greedy continuations
    heat_maps           [{kind, who, grid}] retrieval grids as {kind}_{who}.png
    loss_curve          the training loss PNG's file name

"% of teacher" is `percent_of_teacher`: 100 = as good as the teacher, above 100 better; the ratio
column is the plain student value / teacher value. The measurements' own rows: `speed_rows` /
`speed_setup` (`evaluation.speed.speed_and_samples`), `out_of_domain_metric`
(`evaluation.report.out_of_domain_row`).
"""

from __future__ import annotations

import json
from pathlib import Path

SHAKESPEARE_HELD_OUT = "held-out Shakespeare (data/text.py VAL_WORKS)"


def distilled_on_words(sources) -> str:
    """What a student trained on `data.sources` was distilled on (None / empty: the default corpus)."""
    if not sources:
        return "held-out-split Shakespeare: the training works of data/text.py (the default corpus)"
    return "data.sources " + json.dumps(sources)


def percent_of_teacher(student: float, teacher: float, higher_is_better: bool) -> float | None:
    """100 = as good as the teacher; > 100 better (ratio of values, inverted where lower is better)."""
    if higher_is_better:
        return None if teacher == 0 else 100.0 * student / teacher
    return None if student == 0 else 100.0 * teacher / student


def metric_row(metric: str, student: float, teacher: float | None, higher_is_better: bool,
               fmt: str = ".4g") -> dict:
    """One line of the main table: both values (`fmt`), "ratio" = student / teacher (None without a
    teacher or with a teacher at 0) and "pct_of_teacher" (`percent_of_teacher`)."""
    return {"metric": metric, "student": student, "teacher": teacher, "higher_is_better": higher_is_better,
            "ratio": None if not teacher else student / teacher,
            "pct_of_teacher": None if teacher is None else percent_of_teacher(student, teacher, higher_is_better),
            "format": fmt}


def out_of_domain_metric(row: dict) -> dict:
    """`evaluation.report.out_of_domain_row`'s result as a row of the main table."""
    return metric_row(f"out-of-domain text: {row['what']}, ppl, {row['seq_len']}-token windows",
                      row["student"], row["teacher"], False, ".2f")


def speed_rows(measured: dict) -> list[dict]:
    """`speed_and_samples`' decoding ("speed": tok/s and cache MB per context and batch) and prefill
    rows as rows of the main table."""
    rows = []
    for r in measured.get("speed") or []:
        how = ", caches filled to size" if r.get("synthetic_cache") else ""
        b = r.get("batch", 1)
        rows += [metric_row(f"decode tok/s at {r['context']} context (batch {b}{how})", r["student_tok_s"],
                            r["teacher_tok_s"], True, ".1f"),
                 metric_row(f"cache MB at {r['context']} context, batch {b}", r["student_cache_mb"],
                            r["teacher_cache_mb"], False, ".1f")]
    for r in measured.get("prefill") or []:
        rows.append(metric_row(f"prefill tok/s at {r['context']} (batch 1)", r["student_tok_s"], r["teacher_tok_s"],
                               True, ".1f"))
    return rows


def speed_setup(measured: dict) -> dict | None:
    """How `speed_and_samples` measured (CPU, threads, rounds; prefill rounds where it ran prefill),
    None where it measured no speed."""
    if not (measured.get("speed") or measured.get("prefill")):
        return None
    rounds = measured.get("speed_rounds", 1)
    return {"cpu": measured.get("cpu", "?"), "threads": measured.get("speed_threads", "?"), "rounds": rounds,
            "prefill_rounds": measured.get("prefill_rounds", rounds) if measured.get("prefill") else None}


def cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def row_line(r: dict) -> str:
    """A `metric_row` as a line of the main table."""
    ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    return (f"| {r['metric']} | {cell(r['student'], r['format'])} | {cell(r['teacher'], r['format'])} | {ratio} | "
            f"{cell(r['pct_of_teacher'], '.1f')} |")


def table_head(teacher_label: str | None = None) -> list[str]:
    """The main table's header and rule."""
    teacher = f"teacher ({teacher_label})" if teacher_label else "teacher"
    return [f"| metric | student | {teacher} | student / teacher | % of teacher |", "|---|---|---|---|---|"]


def header_lines(r: dict) -> list[str]:
    """Title, about, the settings line, "distilled on:" and "judged on:"."""
    lines = [f"# {r['title']}", ""]
    for paragraph in r.get("about") or []:
        lines += [paragraph, ""]
    settings = [f"model: {r['model']}"] + ([f"suite: {r['suite']}"] if r.get("suite") else []) + [
        f"teacher: {r.get('teacher_name')}", f"precision: {r.get('precision', 'none')}"]
    return lines + ["; ".join(settings), "", f"distilled on: {r.get('distilled_on', 'unknown')}", "",
                    "judged on: " + "; ".join(r.get("judged_on") or ["unknown"]), ""]


def table_lines(r: dict) -> list[str]:
    return table_head(r.get("teacher_label")) + [row_line(row) for row in r["rows"]]


def speed_note_lines(setup: dict | None) -> list[str]:
    """The speeds' note: fp32, the CPU and threads, and how many rounds (convert: medians of rounds
    alternating student and teacher; eval: one measurement of each model)."""
    if not setup:
        return []
    trained = ""
    if setup.get("training_amp"):
        trained = f" (training ran {setup['training_amp']}: {setup.get('amp_reason', '')})"
    rounds = setup.get("rounds")
    if rounds:
        pr = setup.get("prefill_rounds")
        how = f"each the median of {rounds} rounds alternating student and teacher" + (
            f"; prefill: {pr} round(s)" if pr is not None and pr != rounds else "")
    else:
        how = "one measurement of each model" + (
            f" (the teacher's results reused from {setup['teacher_from']})" if setup.get("teacher_from") else "")
    return [f"\nSpeeds: fp32{trained}, {setup['cpu']}, {setup['threads']} thread(s), {how}."]


def timing_lines(r: dict) -> list[str]:
    lines = []
    if r.get("wall"):
        w = r["wall"]
        lines.append(f"\nWall time {w['total_s'] / 60:.1f} min: "
                     + "; ".join(f"{s:.0f} s {what}" for what, s in w["parts"]) + ".")
    for who, seconds in (r.get("seconds") or {}).items():
        parts = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        lines.append(f"\n{who}: {sum(seconds.values()):.0f} s ({parts})")
    return lines


def accuracy_cell(r: dict) -> str:
    """An accuracy with its 95% Wilson interval and counts: "0.50 [0.24, 0.76] (5/10)"."""
    return f"{r['acc']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] ({r['hits']}/{r['n']})"


def accuracy_cells(r: dict) -> str:
    """The student | teacher | pct of teacher cells of a row {"student", "teacher", "pct_of_teacher"}."""
    p = r["pct_of_teacher"]
    teacher = "" if r["teacher"] is None else accuracy_cell(r["teacher"])
    return f"{accuracy_cell(r['student'])} | {teacher} | {'' if p is None else f'{p:.0f}'}"


def retrieval_lines(r: dict) -> list[str]:
    if not r.get("retrieval"):
        return []
    return ["", "## Retrieval accuracy (95% Wilson interval)", "",
            "| task | tokens | student | teacher | pct of teacher |", "|---|---|---|---|---|"] + [
        f"| {x['task']} | {x['length']} | {accuracy_cells(x)} |" for x in r["retrieval"]]


def text_lines(r: dict) -> list[str]:
    if not r.get("text_perplexity"):
        return []
    lines = ["", f"## Held-out text: {r.get('text') or ''} (perplexity by position bucket)", "",
             "| window | positions | student ppl | teacher ppl | ratio student / teacher |", "|---|---|---|---|---|"]
    return lines + [f"| {x['length']} | {x['bucket']} | {cell(x['student'], '.4g')} | {cell(x['teacher'], '.4g')} | "
                    f"{cell(x['ratio'], '.4g')} |" for x in r["text_perplexity"]]


def generation_lines(r: dict) -> list[str]:
    """Greedy agreement with the teacher and the generative task (`evaluation.generation`)."""
    g = r.get("generation")
    if not g:
        return []
    lines = []
    if g["agreement"]:
        lines += ["", "## Greedy generation vs the teacher", "",
                  "prefix: fraction of the n new tokens equal to the teacher's up to the first divergence; "
                  "positional: fraction of positions with equal tokens; exact: continuations identical "
                  "(95% Wilson interval). A continuation ends at its EOS; both ended counts as equal.", "",
                  "| prompts | new tokens | prefix | positional | exact match |", "|---|---|---|---|---|"]
        lines += [f"| {x['set']} | {x['tokens']} | {x['prefix']:.3f} | {x['positional']:.3f} | "
                  f"{accuracy_cell(x['exact'])} |" for x in g["agreement"]]
    elif r.get("teacher_name") is not None:
        lines += ["", "Greedy agreement not computed: student and teacher tokenizers differ."]
    lines += ["", "## Generative task (exact match, 95% Wilson interval)", "",
              "| task | student | teacher | pct of teacher |", "|---|---|---|---|"]
    return lines + [f"| {x['task']} | {accuracy_cells(x)} |" for x in g["task"]]


def sweep_lines(r: dict, out: Path) -> list[str]:
    """The TransPoint sweep's table and its plot (drawn into `out`)."""
    from transmamba.evaluation.report_plots import plot_transpoint_sweep

    sweep = r.get("transpoint_sweep")
    if not sweep:
        return []
    png = plot_transpoint_sweep(sweep, out / "transpoint_tradeoff.png", r.get("name", r["model"]))
    return (["", "## TransPoint sweep (every layer at one P)", "", "| TransPoint P (all layers) | held-out ppl |",
             "|---|---|"] + [f"| {p} | {v:.2f} |" for p, v in sweep.items()]
            + ["", f"![perplexity vs TransPoint]({png.name})"])


def samples_lines(r: dict) -> list[str]:
    if not r.get("samples"):
        return []
    lines = ["", "## Samples (greedy)"]
    for smp in r["samples"]:
        lines += ["", f"**{smp['prompt']}**", "", f"- teacher: {smp['teacher']!r}", f"- student: {smp['student']!r}"]
    return lines


def heat_map_lines(r: dict, out: Path) -> list[str]:
    """Each retrieval grid of `heat_maps` drawn into `out`, and its image line."""
    from transmamba.evaluation.report_plots import heat_map

    lines = []
    for h in r.get("heat_maps") or []:
        png = heat_map(h["grid"], out / f"{h['kind']}_{h['who']}.png", f"{h['kind']} ({h['who']})")
        lines += ["", f"![{h['kind']} {h['who']}]({png.name})"]
    return lines


def summary_lines(r: dict) -> list[str]:
    """The report's top: the header, the main table and the notes under it (what convert prints)."""
    return header_lines(r) + table_lines(r) + speed_note_lines(r.get("speed_setup")) + timing_lines(r)


def write_report_md(out: Path, r: dict) -> Path:
    """out/report.md (and the PNGs it shows) of the report dict `r` (the module docstring's schema)."""
    lines = (summary_lines(r) + retrieval_lines(r) + text_lines(r) + generation_lines(r) + sweep_lines(r, out)
             + samples_lines(r) + heat_map_lines(r, out))
    if r.get("loss_curve"):
        lines += ["", f"![loss curve]({r['loss_curve']})"]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
