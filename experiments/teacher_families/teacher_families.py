"""(issue 14) Teacher families: exactness of the converter, the P = 0 invariant, and a convert smoke run.

    PYTHONPATH=src python experiments/teacher_families/teacher_families.py [--out runs/teacher_families] [--no-convert]

For every tiny random family in `tests/tiny_teachers.py` (the unit tests' random-init teachers) (with and without GQA):
  full     max |logit diff| of the full-size conversion vs the HF teacher, every TransPoint beyond
           the 40-token sequence (float32, `teachers.check.check_model`)
  p0       max |diff| of every converted Switch layer at P = 0 vs an explicit Mamba-2 reference
           (sequential scan `ops.ssd.ssd_ref`, C = normed q, B = normed k) on that layer's own
           inputs, float64
  convert  `transmamba convert` end to end (tiny budget: 4 steps of 2 x 32 tokens) with the real
           SmolLM2 tokenizer, Switch student (staggered) and Mamba-2 student (P = 0 everywhere):
           held-out perplexity after the run (GQA variant only)
Prints a markdown table and writes it with the raw rows (JSON) under --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import sys

from transmamba.teachers.check import check_model, convert_full_size

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from switch_refs import ssm_ref  # noqa: E402  (the tests' slow Switch references)
from tiny_teachers import TINY_FAMILIES, tiny_teacher  # noqa: E402  (random-init test teachers)


@torch.no_grad()
def p0_error(student, ids) -> float:
    student = student.double()
    inputs, hooks = {}, []
    for i, blk in enumerate(student.blocks):
        hooks.append(blk.mixer.register_forward_pre_hook(
            lambda mod, args, kw, i=i: inputs.__setitem__(i, args[0] if args else kw["u"]), with_kwargs=True))
    student(ids, transpoints=0)
    for hk in hooks:
        hk.remove()
    return max(float((blk.mixer(inputs[i], transpoint=0) - ssm_ref(blk.mixer, inputs[i])).abs().max())
               for i, blk in enumerate(student.blocks))


def convert_smoke(name: str, work: Path) -> dict:
    from transmamba.recipes.convert import convert_main
    from transmamba.data.text import load_tokenizer

    tok = load_tokenizer("smollm2")
    tdir = work / f"teacher-{name}"
    tiny_teacher(name, vocab_size=len(tok)).save_pretrained(tdir)
    tok.save_pretrained(tdir)
    cfg = work / "student.yaml"
    cfg.write_text("student: {n_layers: 2, d_model: 24, n_heads: 2, n_kv_heads: 1, d_ff: 32,"
                   " schedule: {name: staggered, period: 2, span: 32}}\n")
    res = {}
    for kind, extra in (("switch", []), ("mamba2", ["--student.schedule", "ssm"])):
        s = convert_main(["--teacher", str(tdir), "--student", str(cfg), "--quiet", "--name", f"{name}-{kind}",
                          "--out_dir", str(work / "runs"), "--data.seq_len", "32", "--data.cache_windows", "4",
                          "--data.calib_windows", "2", "--data.teacher_cache_dir", str(work / "tc"),
                          "--train.tokens", "256", "--train.batch_size", "2", "--train.warmup_steps", "1",
                          "--eval.batches", "1", "--eval.batch_size", "2", "--eval.transpoints", "[]",
                          "--eval.speed_context", "0", "--eval.prompt_tokens", "2", "--eval.prompts", "['ROMEO:']",
                          "--train.amp", "none",  # fp32 as recorded (2026-12-01, before amp auto)
                          *extra])
        res[kind] = {"init_val_ppl": s["init_val_ppl"], "val_ppl": s["val_ppl"], "teacher_val_ppl": s["teacher_val_ppl"]}
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/teacher_families")
    p.add_argument("--no-convert", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in TINY_FAMILIES:
            row = {"family": name, "model_type": TINY_FAMILIES[name][0]}
            for gqa in (True, False):
                teacher = tiny_teacher(name, gqa)
                chk = check_model(teacher, seq_len=40)
                row[f"full_{'gqa' if gqa else 'mha'}"] = chk["max_abs_logit_diff"]
                row[f"lossless_{'gqa' if gqa else 'mha'}"] = chk["lossless"]
                row[f"p0_{'gqa' if gqa else 'mha'}"] = p0_error(convert_full_size(teacher), ids)
            if not args.no_convert:
                row["convert"] = convert_smoke(name, Path(work))
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = ["| family (model_type) | full size max abs logit diff, GQA / MHA | lossless | P = 0 invariant error (float64) | "
             "convert smoke: held-out ppl teacher / Switch init -> after / Mamba-2 init -> after |", "|---|---|---|---|---|"]
    for r in rows:
        c = r.get("convert")
        conv = (f"{c['switch']['teacher_val_ppl']:.0f} / {c['switch']['init_val_ppl']:.0f} -> {c['switch']['val_ppl']:.0f}"
                f" / {c['mamba2']['init_val_ppl']:.0f} -> {c['mamba2']['val_ppl']:.0f}") if c else "not run"
        lines.append(f"| {r['family']} ({r['model_type']}) | {r['full_gqa']:.1e} / {r['full_mha']:.1e} | "
                     f"{'yes' if r['lossless_gqa'] and r['lossless_mha'] else 'NO'} | "
                     f"{max(r['p0_gqa'], r['p0_mha']):.1e} | {conv} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
