"""Grid VQA on FROZEN visual tokens: can each fusion use what a given visual encoder's tokens hold?

The encoder's tokens are computed once for every grid (no gradient into it) and only the fusion +
head (`adapt.vqa_model.VQAModel.fuse`) train, for many cheap steps. Encoders:
    vit          the grid retrieval teacher's ViT (normed last layer, class token dropped)
    transmamba   the ViM student as the TransMamba init leaves it (subclone + layered init +
                 calibration, before any VQA or distillation step)
    scratch      the ViM student at its random init
AdamW lr 2e-3, wd 0.05, batch 64, constant lr; data = the config's grid VQA (real Fashion-MNIST).
Compare with experiments/grid_vqa/grid_vqa_oracle.py (perfect tokens) and the end-to-end runs.

    python experiments/grid_vqa/grid_vqa_frozen.py --teacher runs/multimodal/i17/grids/teacher/vit \
        [--encoders vit transmamba scratch] [--steps 2000] [--seeds 0] [--train_n 16000] [--probe]

--probe instead fits, per encoder, a linear probe from ONE token to the class of the cell it lies
in (every patch token of every training grid, the ViM class token left out; 8x8 tokens, cell = (row // 4) * 2 + col // 4) and prints
its test accuracy: how much of "what is in my cell" each token carries, linearly.
"""

import argparse
import copy
import types

import torch
import torch.nn.functional as F
from torch import nn

from grid_vqa_oracle import patch_cells
from transmamba.adapt.vqa_model import VQAModel
from transmamba.config import load_config
from transmamba.data.grid_vqa import QTYPES
from transmamba.recipes.vqa import VQA_DEFAULTS, build_vqa_data, build_vqa_run


class Width(nn.Module):
    """A stand-in backbone that only tells VQAModel the token width (the tokens come cached)."""

    def __init__(self, d: int):
        super().__init__()
        self.cfg, self.head = types.SimpleNamespace(d_model=d), nn.Identity()


@torch.no_grad()
def tokens_of(encoder: str, cfg: dict, data: dict, batch: int = 250) -> dict:
    """{"train", "test"}: tokens "n l d" of every grid under the named encoder."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg["mode"] = "scratch" if encoder == "scratch" else "transmamba"
    model, teacher, _, _ = build_vqa_run(run_cfg, data)
    model.eval()

    def enc(x):
        if encoder == "vit":
            _, _, out = teacher(x, return_hidden=True)
            return out[:, teacher.n_prefix:]
        return model.visual_tokens(x)[0]

    out = {k: torch.cat([enc(data[k][0][s:s + batch]) for s in range(0, len(data[k][0]), batch)])
           for k in ("train", "test")}
    out["cls_pos"] = None if encoder == "vit" else model.backbone.cls_pos  # ViM's middle class token
    return out


def train_fusion(fusion, readout, tokens, data, steps, seed, batch=64):
    torch.manual_seed(seed)
    text, mask = data["text"], data["text_mask"]
    model = VQAModel(Width(tokens["train"].shape[-1]), text.shape[-1], fusion,
                     n_answers=data["n_answers"], readout=readout)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    _, _, q_tr, a_tr = data["train"]
    for _ in range(steps):
        idx = torch.randint(0, len(q_tr), (batch,), generator=g)
        loss = F.cross_entropy(model.fuse(tokens["train"][idx], text[q_tr[idx]], mask[q_tr[idx]]), a_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, _, q, a = data["test"]
    with torch.no_grad():
        ok = torch.cat([model.fuse(tokens["test"][s:s + 500], text[q[s:s + 500]], mask[q[s:s + 500]]).argmax(-1)
                        for s in range(0, len(q), 500)]) == a
    qt = data["qtype"][q]
    return ok.float().mean().item(), [ok[qt == i].float().mean().item() for i in range(len(QTYPES))]


def probe_cell_class(tokens: dict, data: dict, steps: int = 500, seed: int = 0) -> float:
    """Test accuracy of a linear map token -> class of the token's cell (see the module docstring)."""
    torch.manual_seed(seed)
    cell_of = patch_cells()
    lab = {k: data[k][1][:, cell_of] for k in ("train", "test")}  # "n 64" cell class per token
    d, keep = tokens["train"].shape[-1], torch.ones(tokens["train"].shape[1], dtype=torch.bool)
    if tokens["cls_pos"] is not None:
        keep[tokens["cls_pos"]] = False
    tokens = {k: tokens[k][:, keep] for k in ("train", "test")}
    lin = nn.Linear(d, 10)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    tr, ytr = tokens["train"].reshape(-1, d), lab["train"].reshape(-1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(tr), (4096,), generator=g)
        loss = F.cross_entropy(lin(tr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = lin(tokens["test"].reshape(-1, d)).argmax(-1)
    return (pred == lab["test"].reshape(-1)).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/multimodal/vqa-grid-fmnist.yaml")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--encoders", nargs="+", default=["vit", "transmamba", "scratch"])
    ap.add_argument("--fusions", nargs="+", default=["late", "modulate", "cross_attention"])
    ap.add_argument("--readout", default="attn")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train_n", type=int, default=16000)
    ap.add_argument("--probe", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, ["--teacher", args.teacher, "--vqa.train_n", str(args.train_n)],
                      defaults=VQA_DEFAULTS)
    torch.manual_seed(0)
    data = build_vqa_data(cfg)
    if args.probe:
        print("| encoder | token -> its cell's class, linear probe, test acc |\n|---|---|")
        for encoder in args.encoders:
            print(f"| {encoder} | {probe_cell_class(tokens_of(encoder, cfg, data), data):.3f} |", flush=True)
        return
    print(f"| encoder | fusion | readout | steps | seed | acc | where | count | relation |")
    print("|---|---|---|---|---|---|---|---|---|")
    for encoder in args.encoders:
        tokens = tokens_of(encoder, cfg, data)
        for fusion in args.fusions:
            for seed in args.seeds:
                acc, per = train_fusion(fusion, args.readout, tokens, data, args.steps, seed)
                print(f"| {encoder} | {fusion} | {args.readout} | {args.steps} | {seed} | {acc:.3f} | "
                      + " | ".join(f"{p:.3f}" for p in per) + " |", flush=True)


if __name__ == "__main__":
    main()
