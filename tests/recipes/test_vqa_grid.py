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


def _grid_args(tmp_path, fusion):
    teacher = save_tiny_vit(tmp_path / "vit56", img_size=56, patch_size=14)
    return ["--data.dataset", "digits", "--vqa.task", "grid", "--vqa.train_n", "64", "--vqa.test_n", "30",
            "--student.arch", "vim", "--student.patch_size", "14", "--student.d_model", "12", "--student.depth", "2",
            "--student.d_state", "4", "--teacher", str(teacher), "--out_dir", str(tmp_path / "run"), "--fusion", fusion,
            "--head.hidden", "16", "--head.d_state", "4", "--init.layers", "1", "--data.calib_size", "16",
            "--train.max_steps", "3", "--train.batch_size", "16", "--train.warmup_steps", "1", "--train.log_every", "1",
            "--train.threads", "1", "--train.progress", "false", "--text.encoder", "minilm"]


@pytest.mark.parametrize("fusion", ["late", "modulate", "cross_attention"])
def test_grid_vqa_runs_and_reports_each_question_type(tmp_path, fusion):
    args = _grid_args(tmp_path, fusion)
    res = train_vqa(load_config(None, args, defaults=VQA_DEFAULTS), text_encoder=hashed_questions_STAND_IN)
    assert res["steps"] == 3 and res["task"] == "grid" and res["distill"] and res["fusion_first_steps"] == 0
    for k in ("test_acc_where", "test_acc_count", "test_acc_relation"):
        assert 0.0 <= res[k] <= 1.0


def test_grid_vqa_fusion_first_through_the_recipe(tmp_path):
    args = _grid_args(tmp_path, "modulate") + ["--train.fusion_first_steps", "2"]
    res = train_vqa(load_config(None, args, defaults=VQA_DEFAULTS), text_encoder=hashed_questions_STAND_IN)
    assert res["steps"] == 3 and res["fusion_first_steps"] == 2 and res["distill"]
    bad = _grid_args(tmp_path, "modulate") + ["--train.fusion_first_steps", "-1"]
    with pytest.raises(ValueError, match="fusion_first_steps"):
        train_vqa(load_config(None, bad, defaults=VQA_DEFAULTS), text_encoder=hashed_questions_STAND_IN)


def test_grid_vqa_distill_first_through_the_recipe_and_its_refusals(tmp_path):
    args = _grid_args(tmp_path, "modulate") + ["--train.distill_first_steps", "1", "--train.fusion_first_steps", "2"]
    res = train_vqa(load_config(None, args, defaults=VQA_DEFAULTS), text_encoder=hashed_questions_STAND_IN)
    assert res["steps"] == 3 and res["distill_first_steps"] == 1 and res["fusion_first_steps"] == 2
    for extra, match in ((["--mode", "scratch"], "needs a teacher"), (["--distill.enabled", "false"], "needs a teacher"),
                         (["--train.fusion_first_steps", "1", "--train.distill_first_steps", "2"], "must not exceed")):
        bad = _grid_args(tmp_path, "modulate") + ["--train.distill_first_steps", "1"] + extra
        with pytest.raises(ValueError, match=match):
            train_vqa(load_config(None, bad, defaults=VQA_DEFAULTS), text_encoder=hashed_questions_STAND_IN)


def test_distill_first_steps_train_only_the_backbone_on_the_teacher_then_only_the_fusion(tmp_path):
    """Steps < distill_first_steps: L_dir alone (the backbone gets gradient, the fusion and head none);
    then until fusion_first_steps the reverse; then everything."""
    from transmamba.recipes.vqa import VQAStep, build_grid_vqa_data, build_vqa_run

    cfg = load_config(None, _grid_args(tmp_path, "modulate"), defaults=VQA_DEFAULTS)
    data = build_grid_vqa_data(cfg, hashed_questions_STAND_IN)
    model, teacher, dloss, _ = build_vqa_run(cfg, data)
    step_module = VQAStep(model, data["text"], data["text_mask"], teacher=teacher, dloss=dloss, alpha=0.5,
                          fusion_first_steps=2, distill_first_steps=1)
    x, _, q, a = data["train"]
    batch = (x[:8], q[:8], a[:8])
    fusion = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    grads = {}
    for step in range(3):
        step_module.zero_grad(set_to_none=True)
        loss, parts = step_module(batch, step)
        loss.backward()
        grads[step] = (any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters()),
                       any(p.grad is not None for p in fusion), set(parts))
    assert grads[0] == (True, False, {"distill_loss", "mean_cos"})
    assert grads[1] == (False, True, {"task_loss"})
    assert grads[2] == (True, True, {"task_loss", "distill_loss", "mean_cos"})
    with pytest.raises(ValueError, match="distill_first_steps"):
        VQAStep(model, data["text"], data["text_mask"], distill_first_steps=1)


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


def test_fusion_first_steps_train_only_the_fusion_then_everything():
    """Steps < train.fusion_first_steps: CE on the backbone's tokens without gradient (no teacher
    call, the backbone unchanged by AdamW); from then on the backbone trains too."""
    from transmamba.recipes.vqa import VQAStep

    torch.manual_seed(0)
    bb = build_student({"arch": "vim", "img_size": 8, "patch_size": 2, "d_model": 16, "depth": 1,
                        "d_state": 4, "num_classes": 3})
    model = VQAModel(bb, 24, "modulate", hidden=16, d_state=4, n_answers=11)
    text, mask = torch.randn(7, 5, 24), torch.ones(7, 5, dtype=torch.bool)

    class NoTeacher:  # the distillation branch would call it; the fusion-first steps must not
        n_prefix = 0

        def __call__(self, *a, **k):
            raise AssertionError("the teacher ran during a fusion-first step")

    step_module = VQAStep(model, text, mask, teacher=NoTeacher(), dloss=torch.nn.Identity(), alpha=0.5,
                          fusion_first_steps=2)
    opt = torch.optim.AdamW(step_module.parameters(), lr=1e-2)
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 6, 1]), torch.tensor([1, 0, 10, 4]))
    bb0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    head0 = model.head[-1].weight.detach().clone()
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        loss, parts = step_module(batch, step)
        assert set(parts) == {"task_loss"}
        loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        opt.step()
    assert all(torch.equal(p, bb0[n]) for n, p in model.backbone.named_parameters())
    fused = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert all(p.grad is not None for p in fused if p.requires_grad)
    assert not torch.equal(model.head[-1].weight, head0)
    # step 2: the full loss runs (here it reaches the teacher)
    with pytest.raises(AssertionError, match="teacher ran"):
        step_module(batch, 2)


def test_fusion_first_steps_without_distillation_then_the_backbone_trains():
    from transmamba.recipes.vqa import VQAStep

    torch.manual_seed(0)
    bb = build_student({"arch": "vim", "img_size": 8, "patch_size": 2, "d_model": 16, "depth": 1,
                        "d_state": 4, "num_classes": 3})
    model = VQAModel(bb, 24, "late", hidden=16, d_state=4, n_answers=11)
    step_module = VQAStep(model, torch.randn(7, 5, 24), torch.ones(7, 5, dtype=torch.bool), fusion_first_steps=1)
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 6, 1]), torch.tensor([1, 0, 10, 4]))
    step_module(batch, 0)[0].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    step_module(batch, 1)[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_a_windowed_teacher_is_the_distillation_target(tmp_path):
    """distill.teacher_window: L_dir is taken against the teacher run with cell-local attention, which
    differs from the full teacher's (so the option is not a no-op)."""
    from transmamba.recipes.vqa import VQAStep, build_grid_vqa_data, build_vqa_run

    cfg = load_config(None, _grid_args(tmp_path, "modulate") + ["--distill.teacher_window", "2"], defaults=VQA_DEFAULTS)
    data = build_grid_vqa_data(cfg, hashed_questions_STAND_IN)
    model, teacher, dloss, _ = build_vqa_run(cfg, data)
    x, _, q, a = data["train"]
    batch = (x[:8], q[:8], a[:8])
    losses = {}
    for w in (0, 2):
        step_module = VQAStep(model, data["text"], data["text_mask"], teacher=teacher, dloss=dloss, alpha=0.5,
                              distill_first_steps=1, fusion_first_steps=1, teacher_window=w)
        losses[w] = step_module(batch, 0)[0]
        _, t_hidden, _ = teacher(x[:8], return_hidden=True, window=w)
        _, feats = model.visual_tokens(x[:8], return_directions=True)
        toks = [model.backbone.align_teacher_tokens(h, teacher.n_prefix) for h in t_hidden]
        torch.testing.assert_close(losses[w], dloss(feats, toks, model.backbone.blocks[0].mixer.perms)[0])
    assert not torch.allclose(losses[0], losses[2])
    res = train_vqa(cfg, text_encoder=hashed_questions_STAND_IN)
    assert res["steps"] == 3
