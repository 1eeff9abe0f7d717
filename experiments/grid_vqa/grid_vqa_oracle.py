"""Grid VQA with ORACLE visual tokens: which fusion / readout can learn the task at all, and in how
many steps, when the visual side is perfect.

The 64 visual tokens (8x8, as the ViM student's patch-7 grid of a 56x56 image) are a learned class
embedding of the token's cell label plus a learned position embedding; the fusion and head are the
library's (`adapt.vqa_model.VQAModel.fuse`), the questions the real ones (`data.grid_vqa`, frozen
MiniLM). Trained with AdamW (lr 2e-3, wd 0.05), batch 64, constant lr; test = 2000 questions of
seed 1. No images are involved: this measures the fusions, not the backbone.

    python experiments/grid_vqa/grid_vqa_oracle.py [--steps 1000 2000] [--seeds 0 1] > table.md
"""

import argparse
import types

import torch
import torch.nn.functional as F
from torch import nn

from transmamba.adapt.vqa_model import VQAModel
from transmamba.data.grid_vqa import ANSWERS, QTYPES, question_bank, sample_grid_questions
from transmamba.recipes.vqa import minilm_questions

D_MODEL = 64


def patch_cells(grid: int = 8) -> torch.Tensor:
    """CELLS index (data.fmnist_grids) of each patch token of a grid x grid layout, row-major "grid^2"."""
    r, c = torch.arange(grid)[:, None].expand(grid, grid), torch.arange(grid)[None].expand(grid, grid)
    half = grid // 2
    return ((r // half) * 2 + c // half).flatten()


class OracleTokens(nn.Module):
    """cells "b 4" -> tokens "b 64 d": class embedding of each token's cell + position embedding."""

    def __init__(self, d: int = D_MODEL):
        super().__init__()
        self.cfg = types.SimpleNamespace(d_model=d)  # what VQAModel reads from a backbone
        self.head = nn.Identity()
        self.cls = nn.Embedding(10, d)
        self.pos = nn.Parameter(torch.randn(64, d) * 0.02)
        self.register_buffer("cell_of", patch_cells(), persistent=False)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return self.cls(cells[:, self.cell_of]) + self.pos


def run(fusion, readout, steps, seed, text, mask, train, test, batch=64):
    torch.manual_seed(seed)
    tokens = OracleTokens()
    model = VQAModel(tokens, text.shape[-1], fusion, n_answers=len(ANSWERS), readout=readout)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train[0]), (batch,), generator=g)
        cells, q, a, _ = (t[idx] for t in train)
        loss = F.cross_entropy(model.fuse(tokens(cells), text[q], mask[q]), a)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        cells, q, a, qt = test
        ok = model.fuse(tokens(cells), text[q], mask[q]).argmax(-1) == a
    return ok.float().mean().item(), [ok[qt == i].float().mean().item() for i in range(len(QTYPES))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--fusions", nargs="+", default=["late", "modulate", "cross_attention"])
    ap.add_argument("--readouts", nargs="+", default=["mean", "attn"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    text, mask = minilm_questions(question_bank()[0])
    train = [torch.from_numpy(a) for a in sample_grid_questions(6000, seed=0)]
    test = [torch.from_numpy(a) for a in sample_grid_questions(2000, seed=1)]
    print("| fusion | readout | steps | seed | acc | where | count | relation |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        for fusion in args.fusions:
            for readout in args.readouts:
                for seed in args.seeds:
                    acc, per = run(fusion, readout, steps, seed, text, mask, train, test)
                    print(f"| {fusion} | {readout} | {steps} | {seed} | {acc:.3f} | "
                          + " | ".join(f"{p:.3f}" for p in per) + " |", flush=True)


if __name__ == "__main__":
    main()
