"""Markdown rows of the issue 17 retrieval and grid-VQA runs (one table per vqa* folder): python experiments/common/multimodal_table.py [runs/multimodal/i17].
experiments/multimodal_retrieval/table.py and experiments/grid_vqa/table.py print one half each."""

import json
import sys
from pathlib import Path


def fmt(d: dict, k: str) -> str:
    return f"{d[k]:.3f}" if k in d else ""


def facet_names(d: dict) -> tuple[str, str] | None:
    """Clip runs since session 19 say what a text's top-1 clip gets right: item / direction on clips,
    items / directions on twin clips (where R@1 below both = the binding was wrong)."""
    for names in (("item", "direction"), ("items", "directions")):
        if f"t2v_r1_{names[0]}" in d:
            return names
    return None


def retrieval_tables(root: Path) -> None:
    """One table per grids* / clips* / twin* folder of `root`."""
    for tdir in sorted(root.glob("grids*")) + sorted(root.glob("clips*")) + sorted(root.glob("twin*")):
        print(f"\n{tdir.name}\n\n| run | steps | t2v R@1 | t2v R@5 | v2t R@1 | v2t R@5 | t2v MedR | top-1 item(s) / direction(s) "
              f"| first stage R@1 (item(s) / direction(s)) | twin acc (first stage) | params visual / fusion | wall s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for f in sorted(tdir.glob("*/result.json")):
            d = json.loads(f.read_text())
            n = facet_names(d)
            facets = f"{fmt(d, f't2v_r1_{n[0]}')} / {fmt(d, f't2v_r1_{n[1]}')}" if n else ""
            first = (f"{fmt(d, 'dual_t2v_r1')} ({fmt(d, f'dual_t2v_r1_{n[0]}')} / {fmt(d, f'dual_t2v_r1_{n[1]}')})"
                     if n and f"dual_t2v_r1_{n[0]}" in d else fmt(d, "dual_t2v_r1"))
            twin = fmt(d, "t2v_twin_acc") + (f" ({fmt(d, 'dual_t2v_twin_acc')})" if "dual_t2v_twin_acc" in d else "")
            print(f"| {f.parent.name} | {d['steps']} | {d['t2v_r1']:.3f} | {d['t2v_r5']:.3f} | {d['v2t_r1']:.3f} | "
                  f"{d['v2t_r5']:.3f} | {d['t2v_medr']:.0f} | {facets} | {first} | {twin} | {d['params_visual']} / {d['params_fusion']} "
                  f"| {d['elapsed_s']:.0f} |")


def vqa_tables(root: Path) -> None:
    """One table per vqa* folder of `root`."""
    for vdir in sorted(root.glob("vqa*")):
        vqa = sorted(vdir.glob("*/result.json"))
        if not vqa:
            continue
        print(f"\ngrid VQA ({vdir.name})\n\n| run | steps | acc | where | count | relation | params fusion |")
        print("|---|---|---|---|---|---|---|")
        for f in vqa:
            d = json.loads(f.read_text())
            print(f"| {f.parent.name} | {d['steps']} | {d['test_acc']:.3f} | {d['test_acc_where']:.3f} | "
                  f"{d['test_acc_count']:.3f} | {d['test_acc_relation']:.3f} | {d['params_fusion']} |")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/multimodal/i17")
    retrieval_tables(root)
    vqa_tables(root)
