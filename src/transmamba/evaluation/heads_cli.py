"""`transmamba heads PATH [--by retrieval|switch_cost] [--lengths ...] [--trials N] [--out DIR] [--json]`.

Ranks the KV heads of a teacher (a local transformers directory, a GGUF file or "smollm2",
converted losslessly at full size) or of a student directory (Hugging Face format or a checkpoint,
with its tokenizer) by what each head alone costs when it loses its attention
(`evaluation.retrieval_probe.head_report`), prints the top --top (20), and writes into --out
(default runs/heads-NAME) heads.png (a layer x KV head heat map of the scores) and ranking.json.
Everything is checked and loaded before anything is written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transmamba.evaluation.long_context import DEPTHS


def load_ranked_model(path: str):
    """(model, tokenizer, kind) for `heads`: a student directory gives our `LM` ("student"); a teacher
    ("smollm2", a .gguf file, a transformers directory) its transformers model ("teacher")."""
    p = Path(path)
    if path != "smollm2" and not path.endswith(".gguf") and not p.is_dir():
        raise FileNotFoundError(f"{path!r} is neither a model directory, a .gguf file nor 'smollm2'")
    from transmamba.hf.student import is_hf_dir

    if p.is_dir() and (is_hf_dir(p) or (p / "state.json").is_file() or not (p / "config.json").is_file()):
        if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"student directory {path} holds no tokenizer (the probe is built from it)")
        from transformers import AutoTokenizer

        from transmamba.hf.student import load_model

        model = load_model(p)
        return model, AutoTokenizer.from_pretrained(str(p), trust_remote_code=False), "student"
    from transmamba.teachers.families import inspect_teacher
    from transmamba.teachers.load import load_teacher

    model, tok = load_teacher(path, check=inspect_teacher)
    if tok is None:
        raise ValueError(f"teacher {path} holds no tokenizer (the probe is built from it)")
    return model, tok, "teacher"


def heat_map(res: dict, png: Path, title: str) -> Path:
    """A layer x KV head image of `res["scores"]` (blank where a layer has no Switch heads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    g = max(res["n_kv_heads"])
    m = np.full((len(res["scores"]), g), np.nan)
    for i, row in enumerate(res["scores"]):
        if row is not None:
            m[i, :len(row)] = row
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * g, 1.5 + 0.22 * len(m)))
    im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(g), [str(j) for j in range(g)])
    ax.set_yticks(range(len(m)), [str(i) for i in range(len(m))], fontsize=7)
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, label="drop in answer log-prob" if res["by"] == "retrieval" else "rise in top-k KL")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def format_ranking(res: dict, top: int) -> str:
    unit = "logp drop" if res["by"] == "retrieval" else "KL rise"
    lines = [f"rank  layer  kv_head  {unit}" + ("  acc drop" if "acc_drop" in res else "")]
    for r, (i, j, s) in enumerate(res["ranking"][:top], 1):
        acc = f"  {res['acc_drop'][f'{i},{j}']:+.3f}" if "acc_drop" in res else ""
        lines.append(f"{r:>4}  {i:>5}  {j:>7}  {s:+.4f}{acc}")
    if "base" in res:
        lines.append(f"all-attention model on the probe: answer log-prob {res['base']['logp']:.3f}, "
                     f"greedy accuracy {res['base']['acc']:.3f} ({res['n_items']} items)")
    return "\n".join(lines)


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {v}")
    return v


def heads_main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="transmamba heads", allow_abbrev=False,
                                description="Rank a teacher's or student's KV heads by a retrieval probe "
                                            "ablation or by their switch cost; write a heat map.")
    p.add_argument("path", help="smollm2, a .gguf file, a transformers directory, or a student directory")
    p.add_argument("--by", default="retrieval", choices=["retrieval", "switch_cost"])
    p.add_argument("--lengths", type=_positive_int, nargs="+", default=[1024],
                   help="probe prompt lengths (switch_cost: the first is the window length)")
    p.add_argument("--trials", type=_positive_int, default=2,
                   help="probe items per (task, length, depth); switch_cost: windows")
    p.add_argument("--depths", type=float, nargs="+", default=list(DEPTHS))
    p.add_argument("--kinds", nargs="+", default=["kv", "passkey"], choices=["kv", "passkey"])
    p.add_argument("--method", default="ssm", choices=["ssm", "mean"],
                   help="retrieval: the head switches to its SSM path (ssm) or is mean-ablated (mean)")
    p.add_argument("--transpoint", type=int, default=None,
                   help="the P a switched head takes (retrieval default 0; switch_cost default: the schedule's)")
    p.add_argument("--batch-size", type=_positive_int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=_positive_int, default=20, help="heads printed")
    p.add_argument("--out", default=None, help="output directory (default runs/heads-NAME)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if any(not 0.0 <= d <= 1.0 for d in args.depths):
        raise ValueError(f"--depths must lie in [0, 1], got {args.depths}")
    if args.transpoint is not None and args.transpoint < 0:
        raise ValueError(f"--transpoint must be >= 0, got {args.transpoint}")
    out = Path(args.out) if args.out else Path("runs") / f"heads-{Path(args.path).name.removesuffix('.gguf')}"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    import torch

    from transmamba.evaluation.retrieval_probe import head_report

    model, tok, kind = load_ranked_model(args.path)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = head_report(model, tok, by=args.by, kinds=args.kinds, lengths=args.lengths, depths=args.depths,
                         trials=args.trials, seed=args.seed, transpoint=args.transpoint, method=args.method,
                         batch_size=args.batch_size)
    res.update({"path": args.path, "model_kind": kind, "lengths": args.lengths, "trials": args.trials,
                "wall_s": round(time.perf_counter() - t0, 1)})
    out.mkdir(parents=True, exist_ok=True)
    png = heat_map(res, out / "heads.png", f"{Path(args.path).name}: KV heads by {args.by}")
    res["heat_map"] = str(png)
    (out / "ranking.json").write_text(json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))
    else:
        print(format_ranking(res, args.top))
        print(f"heat map: {png}")
    return res
