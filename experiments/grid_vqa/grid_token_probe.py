"""Which visual tokens can a frozen-token fusion read cell contents from? (issue 17, grid VQA)

Linear probes on the 8x8 patch tokens of 2x2 Fashion-MNIST grids, for the backbones the grid-VQA
fusion-only phase reads: a scratch ViM at init, the TransMamba ViM at init (subcloned + layered
init, `recipes.vqa.build_vqa_run`), and the ViT teacher it is distilled from. For each cell k the
tokens of one cell are mean-pooled (4x4 tokens) and a logistic regression predicts
  own:   the class in cell k                    (is the content there, locally?)
  other: the class in the diagonally opposite cell (how far has content leaked across the grid?)
Chance is ~0.10 for both. Accuracies are on held-out grids.

    python experiments/grid_vqa/grid_token_probe.py [--teacher runs/multimodal/i17/grids/teacher/vit] [--n 6000] [--init_layers 4] [--teacher_layers] [--teacher_window 4]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from transmamba.config import load_config
from transmamba.recipes.vqa import VQA_DEFAULTS, build_grid_vqa_data, build_vqa_run

GRID = 8  # 56 px / patch 7


def cell_pools(tokens: torch.Tensor) -> torch.Tensor:
    """"n (8 8) d" patch tokens -> "n 4 d": the mean of each cell's 4x4 tokens (row-major cells)."""
    n, _, d = tokens.shape
    t = tokens.reshape(n, 2, GRID // 2, 2, GRID // 2, d)
    return t.mean(dim=(2, 4)).reshape(n, 4, d)


def probe(pools: np.ndarray, cells: np.ndarray, n_train: int) -> dict:
    own, other = [], []
    for k in range(4):
        for target, acc in ((cells[:, k], own), (cells[:, 3 - k], other)):
            clf = LogisticRegression(max_iter=2000, C=1.0)
            clf.fit(pools[:n_train, k], target[:n_train])
            acc.append(clf.score(pools[n_train:, k], target[n_train:]))
    return {"own": round(float(np.mean(own)), 3), "other": round(float(np.mean(other)), 3)}


def without_cls(v: torch.Tensor, cls_pos: int) -> torch.Tensor:
    """The ViM layout "b (1 + 8 8) d" (class token at cls_pos) -> the patch tokens "b (8 8) d"."""
    return torch.cat([v[:, :cls_pos], v[:, cls_pos + 1:]], dim=1)


@torch.no_grad()
def patch_tokens(model, x: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(0, len(x), 500):
        v, _ = model.visual_tokens(x[i:i + 500])
        out.append(without_cls(v, model.backbone.cls_pos))
    return torch.cat(out)


@torch.no_grad()
def teacher_tokens(teacher, backbone, x: torch.Tensor, layer: int = -1, window: int = 0) -> torch.Tensor:
    """The teacher's hidden state after `layer` in the student's layout (its class token dropped);
    window > 0: the teacher's attention kept inside window x window tiles (`models.vit.window_mask`)."""
    out = []
    for i in range(0, len(x), 500):
        _, hidden, _ = teacher(x[i:i + 500], return_hidden=True, window=window)
        out.append(without_cls(backbone.align_teacher_tokens(hidden[layer], teacher.n_prefix), backbone.cls_pos))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/multimodal/i17/grids/teacher/vit")
    ap.add_argument("--n", type=int, default=6000, help="grids in all; the last quarter is held out")
    ap.add_argument("--init_layers", type=int, default=4, help="TransMamba: layers given layered init")
    ap.add_argument("--teacher_layers", action="store_true", help="probe every teacher layer, not only the last")
    ap.add_argument("--teacher_window", type=int, default=0,
                    help="also probe the teacher with attention kept inside W x W patch tiles (4: one cell)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = ["--teacher", args.teacher,
            "--vqa.train_n", str(args.n), "--vqa.test_n", "10", "--init.layers", str(args.init_layers)]
    cfgs = {mode: load_config("configs/multimodal/vqa-grid-fmnist.yaml", base + ["--mode", mode], defaults=VQA_DEFAULTS)
            for mode in ("scratch", "transmamba")}
    data = build_grid_vqa_data(cfgs["scratch"])  # the grids do not depend on the mode
    x, cells = data["train"][0], data["train"][1].numpy()
    rows = {}
    for mode, cfg in cfgs.items():
        torch.manual_seed(0)
        model, teacher, _, _ = build_vqa_run(cfg, data)
        model.eval()
        rows[f"{mode} ViM at init" + (f" ({args.init_layers} layers initialised)" if mode == "transmamba" else "")] = patch_tokens(model, x)
        if teacher is not None:
            layers = range(teacher.cfg.depth) if args.teacher_layers else [teacher.cfg.depth - 1]
            for j in layers:
                rows[f"ViT teacher (layer {j + 1} of {teacher.cfg.depth})"] = teacher_tokens(teacher, model.backbone, x, j)
                if args.teacher_window:
                    rows[f"ViT teacher, window {args.teacher_window} (layer {j + 1} of {teacher.cfg.depth})"] = \
                        teacher_tokens(teacher, model.backbone, x, j, args.teacher_window)
    n_train = 3 * args.n // 4
    res = {name: probe(cell_pools(t.float()).numpy(), cells, n_train) for name, t in rows.items()}
    print("| tokens | own cell's class | opposite cell's class |\n|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['own']} | {r['other']} |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
