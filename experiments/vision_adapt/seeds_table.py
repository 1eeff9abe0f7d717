"""Markdown table for experiments/vision_adapt/seeds.sh: test top-1 (%) per seed, mean and sample std, of
scratch at 100% and TransMamba at 50% (layered init of n = 2 layers, and n = 4 where run), and the gap
between them. Seed 0 with n = 2 is read from runs/vision/strong-teacher, the rest from
runs/vision/seeds/<arch>-<mode>-f<f>-s<seed>[-n4]."""
import statistics
from pathlib import Path

from _vision_results import read_result

RUNS = Path(__file__).resolve().parents[2] / "runs/vision"
SEEDS = (0, 1, 2)
CELLS = {  # name: (mode, fraction, run suffix)
    "TransMamba 50%, n = 2": ("transmamba", "0.5", ""),
    "TransMamba 50%, n = 4": ("transmamba", "0.5", "-n4"),
    "scratch 100%": ("scratch", "1.0", ""),
}


def top1(arch, mode, frac, seed, suffix):
    run = (RUNS / "strong-teacher" / f"{arch}-{mode}-f{frac}" if seed == 0 and not suffix
           else RUNS / "seeds" / f"{arch}-{mode}-f{frac}-s{seed}{suffix}")
    v = read_result(run)
    return None if v is None else 100 * v


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    sd = f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):.2f}{sd} (n={len(xs)})"


def gap_cells(tm, scratch):
    g = [a - b for a, b in zip(tm, scratch) if a is not None and b is not None]
    return " / ".join(f"{x:+.2f}" for x in g) or "—", f"{statistics.mean(g):+.2f}" if g else "—"


results = {arch: {name: [top1(arch, *cell[:2], s, cell[2]) for s in SEEDS] for name, cell in CELLS.items()}
           for arch in ("vim", "vmamba", "plainmamba")}
print("| student | cell | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean ± sd |")
print("|---|---|" + "---|" * (len(SEEDS) + 1))
for arch, cells in results.items():
    for name, xs in cells.items():
        if any(x is not None for x in xs):
            print(f"| {arch} | {name} | " + " | ".join("—" if x is None else f"{x:.2f}" for x in xs)
                  + f" | {summary(xs)} |")
print()
print("| student | gap per seed, TransMamba 50% − scratch 100%: n = 2 | mean | n = 4 | mean |")
print("|---|---|---|---|---|")
for arch, cells in results.items():
    gaps = [gap_cells(cells[f"TransMamba 50%, n = {n}"], cells["scratch 100%"]) for n in (2, 4)]
    print(f"| {arch} | " + " | ".join(f"{a} | {b}" for a, b in gaps) + " |")
