"""Print the main-v2 grid (runs/vision/main-v2) next to the v1 grid (runs/vision/main) as markdown."""
from pathlib import Path

from _vision_results import read_result as get

ROOT = Path(__file__).resolve().parents[2] / "runs/vision/main-v2"
V1 = ROOT.parent / "main"


def fmt(v, pct=True):
    return "not run" if v is None else (f"{100 * v:.2f}" if pct else str(v))


print("| student | params | mode | init | 25% | 50% | 100% |")
print("|---|---|---|---|---|---|---|")
for arch in ("vim", "vmamba", "plainmamba"):
    rows = [("v1", V1, "scratch", "own init, bias off"), ("v1", V1, "transmamba", "mapped, bias off"),
            ("v2", ROOT, "scratch", "own init, bias on"), ("v2", ROOT, "transmamba", "mean_qk, bias on")]
    for tag, base, mode, init in rows:
        cells = [get(base / f"{arch}-{mode}-f{f}") for f in ("0.25", "0.5", "1.0")]
        params = next((get(base / f"{arch}-{mode}-f{f}", "params") for f in ("1.0", "0.5", "0.25")
                       if get(base / f"{arch}-{mode}-f{f}", "params")), None)
        print(f"| {arch} | {fmt(params, False)} | {mode} ({tag}) | {init} | " + " | ".join(fmt(c) for c in cells) + " |")
print()
print("init_top1 of the v2 TransMamba rows (%):")
for arch in ("vim", "vmamba", "plainmamba"):
    print(arch, [fmt(get(ROOT / f"{arch}-transmamba-f{f}", "init_top1")) for f in ("0.25", "0.5", "1.0")])
print()
print("pilots (ViM, 25%, seed 1):")
for d in sorted((ROOT / "pilot").iterdir()) if (ROOT / "pilot").is_dir() else []:
    if d.is_dir():
        print(f"| {d.name} | {fmt(get(d, 'init_top1'))} | {fmt(get(d))} |")
