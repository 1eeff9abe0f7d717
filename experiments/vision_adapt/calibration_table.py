"""Markdown tables for experiments/vision_adapt/calibration.sh (runs/vision/levers): the seed-1 lever
pilot, the chosen recipe over seeds 0-2 against scratch at 100%, and every data fraction (seed 0).
Scratch at 100% is read from runs/vision/strong-teacher (seed 0) and runs/vision/seeds (seeds 1, 2);
the n = 2 baseline from the same places."""
import csv
import statistics
from pathlib import Path

from _vision_results import read_result

RUNS = Path(__file__).resolve().parents[2] / "runs/vision"
LEV = RUNS / "levers"
ARCHS = ("vim", "plainmamba", "vmamba")
SEEDS = (0, 1, 2)
N, O = "--init.calibrate false --init.calibrate_mlp false", "--init.calibrate true --init.calibrate_mlp false"
PILOT = {  # row: (run name under levers/ with {a} = arch, extra arguments)
    "n = 4 (no calibration)": ("{a}-n4-a0.9-s1", "--init.layers 4 $N"),
    "n = 4, alpha 0.5": ("{a}-n4-a0.5-s1", "--init.layers 4 $N --distill.alpha 0.5"),
    "n = 4, copied params at 0.3x lr": ("{a}-n4-lr0.3-s1", "--init.layers 4 $N --init.lr_scale 0.3"),
    "n = 4, copied params at 0.1x lr": ("{a}-n4-lr0.1-s1", "--init.layers 4 $N --init.lr_scale 0.1"),
    "n = 2 + out_proj fit": ("{a}-n2-cal-s1", "--init.layers 2 $O"),
    "n = 4 + out_proj fit": ("{a}-n4-cal-s1", "--init.layers 4 $O"),
    "n = 4 + out_proj fit, alpha 0.5": ("{a}-n4-cal-a0.5-s1", "--init.layers 4 $O --distill.alpha 0.5"),
    "n = 4 + out_proj fit + head fit": ("{a}-n4-calh-s1", "--init.layers 4 $O --init.calibrate_head true"),
    "**n = 4 + out_proj fit + MLP neurons (CAL)**": ("{a}-n4-calm-s1", "--init.layers 4 --init.calibrate true --init.calibrate_mlp true"),
}


def pct(run):
    v = read_result(run)
    return None if v is None else 100 * v


def fmt(x, init=None):
    if x is None:
        return "—"
    return f"{x:.2f}" + ("" if init is None else f" ({init:.1f})")


def scratch100(a, s):
    return pct(RUNS / "strong-teacher" / f"{a}-scratch-f1.0" if s == 0 else RUNS / "seeds" / f"{a}-scratch-f1.0-s{s}")


def baseline_n2(a, s, frac="0.5"):
    return pct(RUNS / "strong-teacher" / f"{a}-transmamba-f{frac}" if s == 0 else RUNS / "seeds" / f"{a}-transmamba-f{frac}-s{s}")


print("Pilot, seed 1, TransMamba at 50% (test top-1 %, init_top1 % in brackets):\n")
print(f"$N = `{N}`, $O = `{O}`\n")
print("| recipe | arguments | " + " | ".join(ARCHS) + " |")
print("|---|---|" + "---|" * len(ARCHS))
print("| n = 2 (previous default) | `--init.layers 2 $N` | " + " | ".join(fmt(baseline_n2(a, 1)) for a in ARCHS) + " |")
for row, (name, args) in PILOT.items():
    cells = []
    for a in ARCHS:
        run = LEV / name.format(a=a)
        if row == "n = 4 (no calibration)" and a != "vim":  # run by vision_seeds.sh (LAYERS=4)
            run = RUNS / "seeds" / f"{a}-transmamba-f0.5-s1-n4"
        init = read_result(run, "init_top1")
        cells.append(fmt(pct(run), None if init is None else 100 * init))
    if any(c != "—" for c in cells):
        print(f"| {row} | `{args}` | " + " | ".join(cells) + " |")
print("| scratch, 100% | `--mode scratch --data.fraction 1.0` | " + " | ".join(fmt(scratch100(a, 1)) for a in ARCHS) + " |")

print("\nCAL at 50% against scratch at 100%, per seed:\n")
print("| student | CAL 50%: seed 0 / 1 / 2 | mean ± sd | scratch 100% mean ± sd | gap per seed | mean gap | (n = 2 mean gap) |")
print("|---|---|---|---|---|---|---|")
for a in ARCHS:
    cal = [pct(LEV / f"{a}-n4-calm-s{s}") for s in SEEDS]
    scr = [scratch100(a, s) for s in SEEDS]
    old = [baseline_n2(a, s) for s in SEEDS]
    ok = [(c, r) for c, r in zip(cal, scr) if c is not None and r is not None]
    gaps = [c - r for c, r in ok]
    old_gaps = [o - r for o, r in zip(old, scr) if o is not None and r is not None]

    def ms(xs):
        xs = [x for x in xs if x is not None]
        return "—" if not xs else f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")
    print(f"| {a} | " + " / ".join(fmt(c) for c in cal) + f" | {ms(cal)} | {ms(scr)} | "
          + " / ".join(f"{g:+.2f}" for g in gaps) + f" | {statistics.mean(gaps):+.2f} | "
          + (f"{statistics.mean(old_gaps):+.2f}" if old_gaps else "—") + " |" if gaps else f"| {a} | — |")

print("\nEvery fraction, seed 0 (scratch / TransMamba n = 2 / CAL):\n")
print("| student | 25% | 50% | 100% |")
print("|---|---|---|---|")
for a in ARCHS:
    cells = []
    for f in ("0.25", "0.5", "1.0"):
        scr = scratch100(a, 0) if f == "1.0" else pct(LEV / f"{a}-scratch-f{f}-s0")
        cal = pct(LEV / (f"{a}-n4-calm-s0" if f == "0.5" else f"{a}-n4-calm-f{f}-s0"))
        cells.append(f"{fmt(scr)} / {fmt(baseline_n2(a, 0, f))} / {fmt(cal)}")
    print(f"| {a} | " + " | ".join(cells) + " |")

print("\nAblation (seed 1, 50%):\n")
print("| run | vim | plainmamba |")
print("|---|---|---|")
for row, name in (("CAL (n = 4, distillation on)", "{a}-n4-calm-s1"),
                  ("CAL, distillation off (`--distill.enabled false`)", "{a}-n4-calm-nodistill-s1"),
                  ("CAL with n = 2 (`--init.layers 2`)", "{a}-n2-calm-s1")):
    print(f"| {row} | " + " | ".join(fmt(pct(LEV / name.format(a=a))) for a in ("vim", "plainmamba")) + " |")

print("\nVideo, VideoMamba on moving Fashion-MNIST (seed 0, test top-1 % on 2000 clips, init_top1 in brackets):\n")
print("| run | top-1 |")
print("|---|---|")
for m in ("scratch", "transmamba", "transmamba-cal"):
    run = LEV / f"videomamba-{m}"
    init = read_result(run, "init_top1")
    print(f"| {m} | {fmt(pct(run), None if init is None else 100 * init)} |")

print("\nViM, 3 epochs, seed 0, CAL at 50% (per-epoch test top-1 %):\n")
print("| teacher | epoch 1 | epoch 2 | epoch 3 |")
print("|---|---|---|---|")
for label, name in (("strong (90.79)", "vim-n4-calm-ep3-s0"), ("default, 5 epochs (88.00)", "vim-n4-calm-ep3-t5-s0")):
    f = LEV / name / "metrics.csv"
    if f.exists():
        rows = [r for r in csv.DictReader(f.open()) if r["test_top1"]]
        print(f"| {label} | " + " | ".join(f"{100 * float(r['test_top1']):.2f}" for r in rows) + " |")
