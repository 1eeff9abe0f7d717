"""Markdown table for experiments/vision_seeds.sh: test top-1 (%) per seed, mean and sample std, of
scratch at 100% and TransMamba at 50% (layered init of n = 2 layers, and n = 4 where run), and the gap
between them. Seed 0 with n = 2 is read from runs/vision/strong-teacher, the rest from
runs/vision/seeds/<arch>-<mode>-f<f>-s<seed>[-n4]."""
import json
import statistics
from pathlib import Path

RUNS = Path(__file__).resolve().parent.parent / "runs/vision"


def top1(arch, mode, frac, seed, suffix=""):
    run = (RUNS / "strong-teacher" / f"{arch}-{mode}-f{frac}" if seed == 0 and not suffix
           else RUNS / "seeds" / f"{arch}-{mode}-f{frac}-s{seed}{suffix}")
    f = run / "result.json"
    return 100 * json.loads(f.read_text())["test_top1"] if f.exists() else None


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    sd = f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):.2f}{sd} (n={len(xs)})"


seeds = (0, 1, 2)
print("| student | cell | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |")
print("|---|---|" + "---|" * (len(seeds) + 1))
gaps = {}
for arch in ("vim", "vmamba", "plainmamba"):
    for mode, frac, suffix, name in (("transmamba", "0.5", "", "TransMamba 50%, n = 2"),
                                     ("transmamba", "0.5", "-n4", "TransMamba 50%, n = 4"),
                                     ("scratch", "1.0", "", "scratch 100%")):
        xs = [top1(arch, mode, frac, s, suffix) for s in seeds]
        if all(x is None for x in xs):
            continue
        text = summary(xs)
        cells = " | ".join("—" if x is None else f"{x:.2f}" for x in xs)
        print(f"| {arch} | {name} | {cells} | {text} |")
    gaps[arch] = [[a - b for a, b in zip((top1(arch, "transmamba", "0.5", s, suffix) for s in seeds),
                                          (top1(arch, "scratch", "1.0", s) for s in seeds))
                   if a is not None and b is not None] for suffix in ("", "-n4")]
print()
print("| student | gap per seed, TransMamba 50% − scratch 100%: n = 2 | mean | n = 4 | mean |")
print("|---|---|---|---|---|")
for arch, per_n in gaps.items():
    cells = [(" / ".join(f"{x:+.2f}" for x in g) or "—", f"{statistics.mean(g):+.2f}" if g else "—")
             for g in per_n]
    print(f"| {arch} | " + " | ".join(f"{a} | {b}" for a, b in cells) + " |")
