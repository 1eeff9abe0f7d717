"""Grid VQA through the VQA recipe (vqa.task grid), tiny: sklearn digits padded to 28x28 stand in
for Fashion-MNIST, `hashed_questions_STAND_IN` (TEST-ONLY random word hashes) for MiniLM."""

import pytest
import torch

from transmamba.adapt.vqa_model import VQAModel
from transmamba.config import load_config
from transmamba.models.vision import build_student
from tiny_fixtures import save_tiny_vit
from transmamba.recipes.vqa import VQA_DEFAULTS, train_vqa


def hashed_questions_STAND_IN(questions):
    table = torch.randn(97, 12, generator=torch.Generator().manual_seed(0))
    words = [q.rstrip("?").split() for q in questions]
    m = max(len(w) for w in words)
    tokens, mask = torch.zeros(len(questions), m, 12), torch.zeros(len(questions), m, dtype=torch.bool)
    for i, ws in enumerate(words):
        for j, w in enumerate(ws):
            tokens[i, j], mask[i, j] = table[sum(map(ord, w)) % 97], True
    return tokens, mask


@pytest.mark.parametrize("fusion", ["late", "modulate", "cross_attention"])
def test_grid_vqa_runs_and_reports_each_question_type(tmp_path, fusion):
    teacher = save_tiny_vit(tmp_path / "vit56", img_size=56, patch_size=14)
    args = ["--data.dataset", "digits", "--vqa.task", "grid", "--vqa.train_n", "64", "--vqa.test_n", "30",
            "--student.arch", "vim", "--student.patch_size", "14", "--student.d_model", "12", "--student.depth", "2",
            "--student.d_state", "4", "--teacher", str(teacher), "--out_dir", str(tmp_path / "run"), "--fusion", fusion,
            "--head.hidden", "16", "--head.d_state", "4", "--init.layers", "1", "--data.calib_size", "16",
            "--train.max_steps", "3", "--train.batch_size", "16", "--train.warmup_steps", "1", "--train.log_every", "1",
            "--train.threads", "1", "--train.progress", "false", "--text.encoder", "minilm"]
    res = train_vqa(load_config(None, args, defaults=VQA_DEFAULTS), text_encoder=hashed_questions_STAND_IN)
    assert res["steps"] == 3 and res["task"] == "grid" and res["distill"]
    for k in ("test_acc_where", "test_acc_count", "test_acc_relation"):
        assert 0.0 <= res[k] <= 1.0


def test_cross_attention_fusion_matches_cross_mamba_size():
    def student():
        torch.manual_seed(0)
        return build_student({"arch": "vim", "img_size": 8, "patch_size": 2, "d_model": 16, "depth": 1,
                              "d_state": 4, "num_classes": 3})

    sizes = {}
    for f in ("modulate", "cross_attention"):
        m = VQAModel(student(), 24, f, hidden=16, d_state=4, n_answers=11)
        sizes[f] = sum(p.numel() for p in m.cross.parameters())
        out = m(torch.randn(3, 1, 8, 8), torch.randn(3, 5, 24), torch.ones(3, 5, dtype=torch.bool))
        assert out.shape == (3, 11)
    assert abs(sizes["cross_attention"] - sizes["modulate"]) / sizes["modulate"] < 0.1


@pytest.mark.parametrize("fusion", ["late", "modulate", "cross_attention"])
def test_attention_readout_feeds_the_head_every_pooled_head(fusion):
    torch.manual_seed(0)
    bb = build_student({"arch": "vim", "img_size": 8, "patch_size": 2, "d_model": 16, "depth": 1,
                        "d_state": 4, "num_classes": 3})
    m = VQAModel(bb, 24, fusion, hidden=16, d_state=4, n_answers=11, readout="attn", readout_heads=3)
    x, mask = torch.randn(3, 1, 8, 8), torch.ones(3, 5, dtype=torch.bool)
    assert m(x, torch.randn(3, 5, 24), mask).shape == (3, 11)
    assert m.head[0].in_features == (3 * 16 + 16 if fusion == "late" else 3 * 16)


def test_unknown_readout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head.readout"):
        train_vqa(load_config(None, ["--head.readout", "max", "--out_dir", str(tmp_path)], defaults=VQA_DEFAULTS))
