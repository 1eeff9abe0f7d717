"""Text-image and text-video retrieval on real Fashion-MNIST (grids and moving clips), on the one engine.

    transmamba train-retrieval --config configs/multimodal/retrieval-grids.yaml \
        [--role teacher|student] [--mode transmamba|scratch] [--fusion none|cross_mamba|cross_attention]

Data (`retrieval.task`): "grids" = 2x2 grids (56x56) of real Fashion-MNIST images captioned with the
item in each cell (`data.fmnist_grids`); "clips" = bounce-free moving clips of one real image
(synthetic motion of real images) captioned with the item and its motion (`data.clip_captions`);
"twin_clips" = clips of two real items, each with its own motion, captioned with both, in twin pairs
that differ only in which item moves which way (`data.twin_clips`; twins share a training batch).
Test galleries: grids, one gallery of `test_n` grids with distinct captions; clips, galleries of 80
clips holding each of the 80 captions once; twin_clips, galleries of 40 twin pairs with distinct
captions (metrics averaged over the galleries).

Text side: the frozen all-MiniLM-L6-v2 (`models.text_encoder`); each distinct caption is encoded
once and its token features cached on disk (`text.cache_dir`, keyed by a hash of the captions).

Visual side (`role`):
    teacher   a ViT made from the trained Fashion-MNIST classifier `teacher_init`
              (`models.vit_resize`: positions tiled 2x2 for grids, interpolated for clips;
              frame-wise on clips), trained here for retrieval; saved to out_dir/vit
    student   ViM (grids) / VideoMamba (clips): mode scratch = own init, task loss only;
              mode transmamba = subcloning + layered init from the retrieval teacher's ViT and
              adaptive multi-directional distillation from its visual tokens (recipes.vision_student)

Loss: L = alpha (InfoNCE(dual) + InfoNCE over K candidates of the re-ranker) + (1 - alpha) L_dir,
alpha = 1 without distillation; the InfoNCE is symmetric with a learned temperature
(`adapt.contrastive`); the re-ranker (fusion != none, `adapt.retrieval_model`; cross-Mamba in
`head.cross_mode` modulate or prefix) scores text -> visual only; `head.stop_grad` sets where its
loss may reach: none = everywhere; scores = not the first-stage (dual) scores it adds to, so the
dual head learns from the dual InfoNCE alone but the backbone's tokens still learn to serve the
re-ranker; all = the re-ranker alone. Evaluation
(`evaluation.retrieval`): R@1/5/10 and median rank both ways on the test
galleries; on clips also t2v_r1_item / t2v_r1_direction, how often a text's top-1 clip has the
right item / the right direction (`facet_r1`); on twin_clips t2v_r1_items / t2v_r1_directions, the
right two items / the right two directions (R@1 below them = binding errors), and
t2v_twin_acc, how often a text scores its own clip above that clip's twin (0.5 = chance).
out_dir gets metrics.csv, loss.png, recall.png (R@k vs k) and result.json.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transmamba.adapt.contrastive import candidate_nce, info_nce
from transmamba.adapt.distill import teacher_targets
from transmamba.adapt.retrieval_model import RETRIEVAL_FUSIONS, RetrievalModel
from transmamba.config import POSITIVE_INT, UNIT, check_config as check_rules, one_of
from transmamba.data.clip_captions import all_clip_captions, caption_facets, make_caption_galleries, make_captioned_clips
from transmamba.data.fashion_mnist import load_image_dataset, to_tensors
from transmamba.data.fmnist_grids import make_caption_grids
from transmamba.data.twin_clips import make_twin_clips, shrink, twin_caption, twin_facets
from transmamba.evaluation.retrieval import (facet_r1, mean_metrics, ranks, recall_curve, retrieval_metrics,
                                             twin_accuracy)
from transmamba.io.files import atomic_write
from transmamba.recipes.scaffold import epoch_fit, recipe_main, run_result, seed_everything, seed_of, write_result
from transmamba.recipes.vision_student import DISTILL_DEFAULTS, VISION_RULES, build_distill_run
from transmamba.training.engine import is_main_process

SEED = "train.seed"  # this recipe's seed key
RETRIEVAL_DEFAULTS = {
    **copy.deepcopy(DISTILL_DEFAULTS),
    "out_dir": "runs/multimodal/retrieval",
    "role": "student",  # teacher | student
    "fusion": "none",  # none | cross_mamba | cross_attention
    "teacher_init": "runs/vision/teacher-fmnist",  # the classifier ViT the retrieval teacher starts from
    "retrieval": {"task": "grids", "train_n": 4000, "test_n": 1000, "n_galleries": 10, "seed": 0,
                  "n_named": 4, "d_embed": 128, "train_k": 8, "rerank_k": 16, "max_k": 20,
                  "clip": {"frames": 4, "canvas": 35, "speed": 2}},
    "text": {"encoder": "minilm", "cache_dir": "runs/multimodal/text-cache"},
    # cross_mode: modulate | prefix; stop_grad: none | scores | all (what the re-ranker's loss does
    # not reach: nothing, the first-stage scores, or neither those nor the backbone's tokens)
    "head": {"d_state": 8, "expand": 2.0, "num_heads": 4, "cross_mode": "modulate", "stop_grad": "none"},
}
STOP_GRAD = ("none", "scores", "all")
METRIC_FIELDS = ["epoch", "task_loss", "nce", "rerank_nce", "distill_loss", "mean_cos", "scale",
                 "test_t2v_r1", "test_t2v_r5", "test_v2t_r1", "test_v2t_r5"]


def check_config(cfg: dict) -> None:
    check_rules(cfg, {**VISION_RULES, "role": one_of("teacher", "student"), "fusion": one_of(*RETRIEVAL_FUSIONS),
                      "retrieval.task": one_of("grids", "clips", "twin_clips"), "retrieval.train_n": POSITIVE_INT,
                      "retrieval.test_n": POSITIVE_INT, "retrieval.train_k": POSITIVE_INT,
                      "retrieval.rerank_k": POSITIVE_INT, "distill.alpha": UNIT,
                      "head.cross_mode": one_of("modulate", "prefix"), "head.stop_grad": one_of(*STOP_GRAD)})
    if cfg["distill"]["kd_weight"]:
        raise ValueError("distill.kd_weight must be 0: the teacher has no logits for retrieval")
    if cfg["role"] == "teacher" and cfg["fusion"] != "none":
        raise ValueError("the retrieval teacher is a dual encoder: fusion must be 'none'")


# ---------------------------------------------------------------------------------------------
# data


def cached_text_features(texts: list[str], cfg: dict, text_encoder=None) -> dict:
    """{"tokens" "n m d" float16, "mask" "n m", "pooled" "n d"} of texts, cached in text.cache_dir.

    text_encoder: texts -> (tokens, mask, pooled) (tests pass a tiny stand-in; not cached)."""
    if text_encoder is not None:
        tokens, mask, pooled = text_encoder(texts)
        return {"tokens": tokens.half(), "mask": mask, "pooled": pooled.float()}
    from transmamba.models.text_encoder import MODEL_ID, encode_texts, load_minilm

    key = hashlib.sha1(json.dumps([MODEL_ID, texts]).encode()).hexdigest()[:16]
    path = Path(cfg["text"]["cache_dir"]) / f"minilm-{key}.pt"
    if path.is_file():
        return torch.load(path)
    model, tok = load_minilm()
    tokens, mask, pooled = encode_texts(texts, model, tok)
    out = {"tokens": tokens.half(), "mask": mask, "pooled": pooled}
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(out, tmp))
    return out


def caption_ids(cap_tr: list[str], cap_te: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(bank = the sorted distinct captions of both splits, train ids "n_tr", test ids "n_te")."""
    bank = sorted(set(cap_tr) | set(cap_te))
    pos = {c: i for i, c in enumerate(bank)}
    return bank, np.array([pos[c] for c in cap_tr]), np.array([pos[c] for c in cap_te])


def build_retrieval_data(cfg: dict, text_encoder=None) -> dict:
    """Visual tensors and caption ids per split, the caption bank's features, the galleries."""
    r, dcfg = cfg["retrieval"], cfg["data"]
    base = dcfg["dataset"] if dcfg["dataset"] in ("fashion_mnist", "digits") else "fashion_mnist"
    tr_img, tr_lab = load_image_dataset(base, "train", root=dcfg.get("root"))
    te_img, te_lab = load_image_dataset(base, "test", root=dcfg.get("root"))
    if tr_img.shape[-1] != 28:  # sklearn digits (8x8) for tests: pad to 28x28
        pad = lambda a: np.pad(a, ((0, 0), (10, 10), (10, 10)))
        tr_img, te_img = pad(tr_img), pad(te_img)
    seed = int(r["seed"])
    mean, std = float(tr_img.mean()) / 255.0, float(tr_img.std()) / 255.0
    if r["task"] == "grids":
        x_tr, _, cap_tr = make_caption_grids(tr_img, tr_lab, int(r["train_n"]), seed=seed, n_named=int(r["n_named"]))
        x_te, _, cap_te = make_caption_grids(te_img, te_lab, int(r["test_n"]), seed=seed + 1,
                                             n_named=int(r["n_named"]), unique=True)
        bank, y_tr, y_te = caption_ids(cap_tr, cap_te)
        galleries = [np.arange(len(x_te))]
        video, frames, facets, group = False, 1, None, 1
    else:  # clips / twin_clips: galleries of 80 clips
        c, n_gal = r["clip"], int(r["n_galleries"])
        kw = dict(frames=int(c["frames"]), canvas=int(c["canvas"]), speed=int(c["speed"]))
        if r["task"] == "twin_clips":
            x_tr, s_tr = make_twin_clips(shrink(tr_img), tr_lab, int(r["train_n"]) // 2, seed=seed, **kw)
            x_te, s_te = make_twin_clips(shrink(te_img), te_lab, 40 * n_gal, seed=seed + 1, unique=True, **kw)
            bank, y_tr, y_te = caption_ids([twin_caption(s) for s in s_tr], [twin_caption(s) for s in s_te])
            facet_arrays, group = twin_facets(s_te), 2
        else:
            x_tr, y_tr = make_captioned_clips(tr_img, tr_lab, int(r["train_n"]), seed=seed, **kw)
            x_te, y_te = make_caption_galleries(te_img, te_lab, n_gal, seed=seed + 1, **kw)
            bank, facet_arrays, group = all_clip_captions(), caption_facets(y_te), 1
        galleries = [np.arange(g * 80, (g + 1) * 80) for g in range(n_gal)]
        video, frames = True, int(c["frames"])
        facets = {k: torch.as_tensor(v) for k, v in facet_arrays.items()}
    train = to_tensors(x_tr, y_tr, mean, std)
    test = to_tensors(x_te, y_te, mean, std)
    text = cached_text_features(bank, cfg, text_encoder)
    return {"train": train, "test": test, "captions": bank, "text": text, "galleries": galleries,
            "img_size": int(x_tr.shape[-1]), "num_classes": 10, "video": video, "frames": frames,
            "fill": -mean / max(std, 1e-6), "facets": facets, "group": group, "twins": r["task"] == "twin_clips"}


# ---------------------------------------------------------------------------------------------
# model


def build_teacher_backbone(cfg: dict, data: dict):
    """The retrieval teacher's ViT, made from the classifier ViT at cfg["teacher_init"]."""
    from transmamba.models.vit_resize import resize_vit
    from transmamba.models.vit_weights import load_pretrained_vit

    vit = load_pretrained_vit(cfg["teacher_init"])
    if vit.cfg.img_size != data["img_size"]:
        vit = resize_vit(vit, data["img_size"], "interpolate" if data["video"] else "tile",
                         seed=int(cfg["train"]["seed"]))
    return vit


def build_retrieval_model(cfg: dict, data: dict):
    """(RetrievalModel, teacher ViT or None, DirectionalDistillLoss or None, init report)."""
    h, d_text = cfg["head"], data["text"]["tokens"].shape[-1]
    if cfg["role"] == "teacher":
        backbone, teacher, dloss, report = build_teacher_backbone(cfg, data), None, None, {"copied": [], "init_layers": 0}
    else:
        backbone, teacher, dloss, report = build_distill_run(cfg, data)
        backbone.head = nn.Identity()
    model = RetrievalModel(backbone, d_text, int(cfg["retrieval"]["d_embed"]), cfg["fusion"],
                           d_state=int(h["d_state"]), expand=float(h["expand"]), num_heads=int(h["num_heads"]),
                           cross_mode=h["cross_mode"])
    return model, teacher, dloss, report


def hard_candidates(dual: torch.Tensor, same: torch.Tensor, k: int) -> torch.Tensor:
    """"b k" visual indices per text: the positive (i itself) first, then the k-1 highest-scoring
    in-batch visuals that do not carry the text's caption."""
    b = dual.shape[0]
    k = min(k, b)
    neg = dual.detach().masked_fill(same, float("-inf"))
    top = neg.topk(k - 1, dim=1).indices if k > 1 else dual.new_zeros(b, 0, dtype=torch.long)
    return torch.cat([torch.arange(b, device=dual.device)[:, None], top], dim=1)


class RetrievalStep(nn.Module):
    """loss = alpha (InfoNCE(dual) + InfoNCE over K re-ranked candidates) + (1 - alpha) L_dir.

    stop_grad: where the re-ranker's loss may not reach. "none": it trains everything, the dual
    scores it adds to included; "scores": the first-stage scores are detached, so the dual head
    learns from the dual InfoNCE alone while the backbone's tokens still get the re-ranker's
    gradient; "all": tokens and scores detached, the re-ranker trains alone and the backbone learns
    as with fusion none."""

    def __init__(self, model: RetrievalModel, text: dict, *, teacher=None, dloss=None, alpha: float = 1.0,
                 train_k: int = 8, teacher_window: int = 0, stop_grad: str = "none"):
        super().__init__()
        self.model, self.dloss, self.alpha, self.train_k = model, dloss, alpha, train_k
        if stop_grad not in STOP_GRAD:
            raise ValueError(f"stop_grad must be one of {STOP_GRAD}, got {stop_grad!r}")
        self.stop_grad = stop_grad
        self.teacher_window = int(teacher_window)
        self.__dict__["teacher"] = teacher
        for k in ("tokens", "mask", "pooled"):
            self.register_buffer(f"text_{k}", text[k], persistent=False)

    def forward(self, batch, step: int):
        x, cap = batch
        m = self.model
        v, tokens, feats = m.encode_visual(x, return_directions=self.dloss is not None)
        t = m.encode_text(self.text_pooled[cap])
        dual = m.dual_scores(t, v)
        same = cap[:, None] == cap[None, :]
        nce, _, _ = info_nce(dual, same)
        parts = {"nce": nce, "scale": m.scale().detach()}
        task = nce
        if m.fusion != "none":
            eye = torch.eye(len(cap), dtype=torch.bool, device=cap.device)
            cand = hard_candidates(dual, same | eye, self.train_k)  # "b k"
            b, k = cand.shape
            rows = torch.arange(b, device=cap.device)[:, None].expand(b, k)
            read = tokens.detach() if self.stop_grad == "all" else tokens
            cs = m.cross_scores(read[cand.flatten()], self.text_tokens[cap[rows.flatten()]],
                                self.text_mask[cap[rows.flatten()]]).view(b, k)
            first = dual.detach() if self.stop_grad != "none" else dual
            rr = candidate_nce(first.gather(1, cand) + cs)
            parts["rerank_nce"] = rr
            task = task + rr
        parts["task_loss"] = task
        if self.dloss is None:
            return task, parts
        _, toks = teacher_targets(self.teacher, m.backbone, x, self.teacher_window)
        dl, cos = self.dloss(feats, toks, m.backbone.blocks[0].mixer.perms)
        parts.update(distill_loss=dl, mean_cos=cos.mean())
        return self.alpha * task + (1 - self.alpha) * dl, parts


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def gallery_scores(model: RetrievalModel, x: torch.Tensor, cap: torch.Tensor, text: dict, rerank_k: int,
                   batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2v, v2t) score matrices "n n" of one gallery (text i <-> visual i). With a re-ranker, each
    text's top rerank_k visuals by s_dual get s_dual + s_cross and stay above the rest (moved up by
    a constant), the others keep s_dual; v2t is s_dual."""
    embs, toks = [], []
    for s in range(0, len(x), batch_size):
        e, tk, _ = model.encode_visual(x[s:s + batch_size])
        embs.append(e)
        toks.append(tk)
    v, tokens = torch.cat(embs), torch.cat(toks)
    t = model.encode_text(text["pooled"][cap])
    dual = model.dual_scores(t, v)
    if model.fusion == "none":
        return dual, dual
    k = min(rerank_k, len(x))
    top = dual.topk(k, dim=1).indices  # "n k"
    rows = torch.arange(len(x))[:, None].expand_as(top).flatten()
    cols = top.flatten()
    cs = torch.cat([model.cross_scores(tokens[cols[s:s + batch_size]], text["tokens"][cap[rows[s:s + batch_size]]],
                                       text["mask"][cap[rows[s:s + batch_size]]])
                    for s in range(0, len(rows), batch_size)])
    t2v = dual.clone()
    lift = float(dual.max() - dual.min()) + float(cs.abs().max()) + 1.0
    t2v[rows, cols] = dual[rows, cols] + cs + lift
    return t2v, dual


@torch.no_grad()
def evaluate_retrieval(model: RetrievalModel, data: dict, rerank_k: int, max_k: int = 20) -> dict:
    """Metrics averaged over the test galleries, plus the recall curves (R@1..R@max_k) both ways.
    With a re-ranker, "dual_t2v_*" are the text -> visual metrics of the first stage (s_dual) alone."""
    was = model.training
    model.eval()
    try:
        x, cap = data["test"]
        rows, curves = [], {"t2v": [], "v2t": []}
        for g in data["galleries"]:
            gi = torch.as_tensor(g)
            t2v, v2t = gallery_scores(model, x[gi], cap[gi], data["text"], rerank_k)
            rows.append(retrieval_metrics(t2v, v2t))
            facets = {k: f[gi] for k, f in (data.get("facets") or {}).items()}
            rows[-1].update(facet_r1(t2v, facets))
            if data.get("twins"):
                rows[-1].update(twin_accuracy(t2v))
            if model.fusion != "none":  # the first stage alone (s_dual), to tell the re-ranker's share
                rows[-1].update({f"dual_{k}": v for k, v in retrieval_metrics(v2t).items() if k.startswith("t2v")})
                rows[-1].update(facet_r1(v2t, facets, prefix="dual_t2v"))
                if data.get("twins"):
                    rows[-1].update(twin_accuracy(v2t, prefix="dual_t2v"))
            curves["t2v"].append(recall_curve(ranks(t2v), max_k))
            curves["v2t"].append(recall_curve(ranks(v2t.transpose(0, 1)), max_k))
    finally:
        model.train(was)
    out = mean_metrics(rows)
    out["curves"] = {k: np.mean(np.array(c), 0).tolist() for k, c in curves.items()}
    return out


def plot_recall(curves: dict, path: Path, title: str) -> None:
    """recall.png: R@k vs k, one line per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, marker=".", label=k.replace("2", " -> "))
    ax.set_xlabel("k")
    ax.set_ylabel("R@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# run


def train_retrieval(cfg: dict, text_encoder=None) -> dict:
    """Run one retrieval config (module docstring); returns the result dict, also in result.json."""
    from transmamba.models.vit import save_vit

    check_config(cfg)
    out, r = Path(cfg["out_dir"]), cfg["retrieval"]
    seed_everything(seed_of(cfg, SEED))
    data = build_retrieval_data(cfg, text_encoder)
    model, teacher, dloss, report = build_retrieval_model(cfg, data)
    alpha = float(cfg["distill"]["alpha"]) if dloss is not None else 1.0
    step_module = RetrievalStep(model, data["text"], teacher=teacher, dloss=dloss, alpha=alpha,
                                train_k=int(r["train_k"]), teacher_window=int(cfg["distill"]["teacher_window"]),
                                stop_grad=cfg["head"]["stop_grad"])
    x_tr, c_tr = data["train"]
    rk, mk = int(r["rerank_k"]), int(r["max_k"])
    init = evaluate_retrieval(model, data, rk, mk)

    def evaluate(_):
        ev = evaluate_retrieval(model, data, rk, mk)
        return {f"test_{k}": v for k, v in ev.items() if k != "curves"}

    name = f"retrieval {r['task']} {cfg['role']}" + ("" if cfg["role"] == "teacher" else f" {cfg['mode']}/{cfg['fusion']}")
    res = epoch_fit(name, step_module, (x_tr, c_tr), cfg, evaluate, recipe="retrieval", metric_fields=METRIC_FIELDS,
                    saved=step_module, group=data["group"],
                    fingerprint={k: cfg[k] for k in ("student", "role", "mode", "fusion", "head", "retrieval")})
    final = evaluate_retrieval(model, data, rk, mk)
    n_fusion = sum(p.numel() for n, p in model.named_parameters() if n.startswith("cross."))
    result = {**run_result(res), **{k: v for k, v in final.items() if k != "curves"}, "curves": final["curves"],
              "init": {k: v for k, v in init.items() if k != "curves"}, "role": cfg["role"], "mode": cfg["mode"],
              "fusion": cfg["fusion"], "task": r["task"], "init_layers": report["init_layers"],
              "distill": dloss is not None, "n_captions": len(data["captions"]), "train_n": len(x_tr),
              "test_galleries": len(data["galleries"]), "gallery_size": len(data["galleries"][0]),
              "params_visual": sum(p.numel() for p in model.backbone.parameters()), "params_fusion": n_fusion,
              "temperature": float(1.0 / model.scale().detach())}
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        plot_recall(final["curves"], out / "recall.png", f"{name}: R@k on the test galleries")
        if cfg["role"] == "teacher":
            save_vit(model.backbone, out / "vit", {"retrieval_config": cfg, "t2v_r1": final["t2v_r1"]})
    write_result(out / "result.json", result, config=cfg, drop=("losses",))
    return result


def train_retrieval_main(argv=None) -> int:
    """CLI: --config FILE [--role R] [--mode M] [--fusion F] [--section.key value ...]; prints the result."""
    return recipe_main(argv, RETRIEVAL_DEFAULTS, lambda cfg, _: train_retrieval(cfg), __doc__,
                       prog="transmamba train-retrieval", hide=("losses", "curves"), status=True)
