"""Yes/no VQA with cross-Mamba fusion (transmamba.recipes.vqa): questions, model, run.

The real text encoder (SmolLM2-135M) is NOT used here: `tiny_random_text_encoder_STAND_IN` is a
2-layer random Llama with a toy word-hash tokenizer, only for these tests. Images are sklearn's
8x8 digits (labels 0..9 stand in for the 10 Fashion-MNIST classes).
"""

import json

import numpy as np
import pytest
import torch

from transmamba.config import load_config
from tiny_fixtures import save_tiny_vit, tiny_llama
from transmamba.models.vision import build_student
from transmamba.adapt.vqa_model import FUSIONS, VQAModel
from transmamba.data.vqa_questions import ATTRIBUTES, CLASS_NAMES, question_bank, sample_questions
from transmamba.recipes.vqa import VQA_DEFAULTS, build_vqa_data, check_config, encode_questions, train_vqa


def tiny_random_text_encoder_STAND_IN():
    """TEST-ONLY stand-in for SmolLM2: a tiny random Llama (d_text 32) and a word-hash tokenizer."""
    lm = tiny_llama(seed=0)

    def tokenize(q):
        return [sum(map(ord, w)) % 64 for w in q.split()]

    return lm, tokenize


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny RANDOM ViT teacher for 8x8 digits (only its weights' shapes matter here)."""
    return save_tiny_vit(tmp_path_factory.mktemp("mm") / "teacher", img_size=8, patch_size=2)


def _args(out, teacher, fusion="modulate", extra=()):
    return ["--data.dataset", "digits", "--student.arch", "vim", "--student.patch_size", "2",
            "--student.d_model", "12", "--student.depth", "2", "--student.d_state", "4",
            "--teacher", str(teacher), "--out_dir", str(out), "--fusion", fusion,
            "--text.layer", "1", "--head.hidden", "16", "--head.d_state", "4",
            "--train.max_steps", "4", "--train.batch_size", "32", "--train.warmup_steps", "2",
            "--train.log_every", "1", "--train.lr", "3e-3", "--train.threads", "1",
            "--train.progress", "false", "--init.layers", "1", *extra]


# ---------------------------------------------------------------------------------------------
# questions


def test_question_bank_answers_follow_the_label():
    questions, answers, is_attr = question_bank()
    assert len(set(questions)) == len(questions) == 2 * len(CLASS_NAMES) + len(ATTRIBUTES)
    cls_rows = answers[~is_attr]
    assert (cls_rows.sum(1) == 1).all()  # a class question is yes for exactly its class
    for q, row in zip(np.array(questions)[~is_attr], cls_rows):
        assert CLASS_NAMES[int(row.argmax())] in q
    assert {"Is this a sneaker?", "Is this an ankle boot?", "Does the picture show a bag?"} <= set(questions)
    assert answers[questions.index("Is this worn on the feet?")].nonzero()[0].tolist() == [5, 7, 9]
    assert answers[questions.index("Is this a top?")].nonzero()[0].tolist() == [0, 2, 6]
    attr = answers[is_attr]
    # every class has at least one yes and one no question of each type, so balancing is possible
    for rows in (cls_rows, attr):
        assert rows.any(0).all() and (~rows).any(0).all()


@pytest.mark.parametrize("n", [1, 7, 4000])
def test_sampled_questions_are_consistent_and_balanced(n):
    _, answers, is_attr = question_bank()
    labels = np.random.default_rng(3).integers(0, 10, n)
    q, a = sample_questions(labels, answers, is_attr, attr_frac=0.25, seed=5)
    assert a.sum() == (n + 1) // 2  # exactly balanced
    assert (answers[q, labels] == a.astype(bool)).all()  # every answer is right for its label
    q2, a2 = sample_questions(labels, answers, is_attr, attr_frac=0.25, seed=5)
    assert (q == q2).all() and (a == a2).all()
    if n == 4000:
        attr = is_attr[q]
        assert 0.22 < attr.mean() < 0.28
        for sel in (attr, ~attr):  # balanced within each question type, not just overall
            assert 0.45 < a[sel].mean() < 0.55
        # neither the label alone nor the question alone gives the answer
        for c in range(10):
            assert 0.35 < a[labels == c].mean() < 0.65
        cls_q = ~attr
        assert 0.1 < a[cls_q & (q % 10 == labels)].size / max(1, cls_q.sum()) < 0.9
        assert not (a == 1).all() and (q != q[0]).any()
        assert (sample_questions(labels, answers, is_attr, seed=6)[0] != q).any()


def test_sample_questions_rejects_bad_input():
    _, answers, is_attr = question_bank()
    with pytest.raises(ValueError, match="labels"):
        sample_questions(np.array([0, 10]), answers, is_attr)
    with pytest.raises(ValueError, match="labels"):
        sample_questions(np.zeros((2, 2), dtype=int), answers, is_attr)
    with pytest.raises(ValueError, match="attr_frac"):
        sample_questions(np.array([1]), answers, is_attr, attr_frac=1.5)


def test_encode_questions_pads_and_normalises():
    lm, tok = tiny_random_text_encoder_STAND_IN()
    qs = ["Is this a bag?", "Is this worn on the upper body?"]
    tokens, mask = encode_questions(qs, lm, tok, layer=1)
    assert tokens.shape == (2, 7, 32) and mask.sum(1).tolist() == [4, 7]
    assert (tokens[0, 4:] == 0).all() and not mask[0, 4:].any()
    with torch.no_grad():  # n(x) = (x - mean) / sqrt(var + 1e-5) of layer 1's hidden states
        raw = lm(torch.tensor([tok(qs[1])]), output_hidden_states=True).hidden_states[1][0]
    want = (raw - raw.mean(-1, keepdim=True)) / torch.sqrt(raw.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(tokens[1], want, atol=1e-5)
    # the same question gives the same features whatever else is in the batch
    t1, _ = encode_questions(qs[:1], lm, tok, layer=1)
    assert torch.allclose(t1[0], tokens[0, :4])
    with pytest.raises(ValueError, match="text.layer"):
        encode_questions(qs, lm, tok, layer=9)


# ---------------------------------------------------------------------------------------------
# model


def _tiny_model(fusion, seed=0):
    torch.manual_seed(seed)
    bb = build_student({"arch": "vim", "img_size": 8, "patch_size": 2, "d_model": 12, "depth": 2,
                        "d_state": 4, "num_classes": 10})
    return VQAModel(bb, d_text=32, fusion=fusion, hidden=16, d_state=4)


def _text(b, m=5, seed=1, lengths=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, m, 32, generator=g)
    mask = torch.ones(b, m, dtype=torch.bool)
    for i, n in enumerate(lengths or []):
        mask[i, n:] = False
        t[i, n:] = 0
    return t, mask


def test_fusions_use_the_text_as_designed():
    """At init "modulate" is the plain visual path (W_mod = 0: the text does not matter);
    "late" and "prefix" depend on the text from the start."""
    x = torch.randn(3, 1, 8, 8)
    t1, m = _text(3, seed=1)
    t2, _ = _text(3, seed=2)
    for fusion in FUSIONS:
        model = _tiny_model(fusion).eval()
        same = torch.allclose(model(x, t1, m), model(x, t2, m), atol=1e-6)
        assert same == (fusion == "modulate"), fusion
    mod = _tiny_model("modulate").eval()
    v, _ = mod.visual_tokens(x)
    plain = mod.head(mod.norm_out(v + mod.cross._scan(mod.norm_in(v))).mean(1))
    assert torch.allclose(mod(x, t1, m), plain, atol=1e-6)
    with torch.no_grad():  # once W_mod is non-zero the text does change the answer
        mod.cross.text_mod.weight.normal_()
    assert not torch.allclose(mod(x, t1, m), mod(x, t2, m), atol=1e-4)


def test_prefix_groups_by_length_exactly():
    """Padded batches in "prefix" equal running each question unpadded on its own."""
    model = _tiny_model("prefix").eval()
    x = torch.randn(4, 1, 8, 8)
    t, m = _text(4, m=6, lengths=[6, 3, 6, 2])
    out = model(x, t, m)
    for i, n in enumerate([6, 3, 6, 2]):
        one = model(x[i:i + 1], t[i:i + 1, :n], m[i:i + 1, :n])
        assert torch.allclose(out[i], one[0], atol=1e-5)
    # padding is ignored by the masked fusions too
    for fusion in ("late", "modulate"):
        model = _tiny_model(fusion).eval()
        with torch.no_grad():
            if fusion == "modulate":
                model.cross.text_mod.weight.normal_()
            t_junk = t.clone()
            t_junk[~m] = 5.0
        assert torch.allclose(model(x, t, m), model(x, t_junk, m), atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_decreases_on_a_tiny_batch(fusion):
    model = _tiny_model(fusion)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g)
    t, m = _text(16, lengths=[5, 3] * 8)
    a = torch.randint(0, 2, (16,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x, t, m), a)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("head."))


def test_model_rejects_bad_input():
    with pytest.raises(ValueError, match="fusion"):
        _tiny_model("concat")
    model = _tiny_model("late")
    t, m = _text(2)
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(3, 1, 8, 8), t, m)
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(2, 1, 8, 8), t, m[:, :3])


# ---------------------------------------------------------------------------------------------
# config and end-to-end run


def test_bad_config_raises(tmp_path, teacher_dir):
    for extra, match in ((["--fusion", "concat"], "fusion"), (["--mode", "half"], "mode"),
                         (["--distill.kd_weight", "1.0"], "kd_weight"),
                         (["--data.dataset", "moving_fmnist"], "data.dataset"),
                         (["--text.encoder", "gpt9"], "text.encoder"),
                         (["--vqa.attr_frac", "2"], "attr_frac")):
        cfg = load_config(None, _args(tmp_path, teacher_dir, extra=extra), defaults=VQA_DEFAULTS)
        with pytest.raises(ValueError, match=match):
            check_config(cfg)
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, ["--vqa.atr_frac", "0.1"], defaults=VQA_DEFAULTS)


def test_shipped_config_loads():
    cfg = load_config("configs/multimodal/vqa-fmnist.yaml", ["--fusion", "late"], defaults=VQA_DEFAULTS)
    check_config(cfg)
    assert cfg["student"]["arch"] == "vim" and cfg["student"]["d_model"] == 64
    assert cfg["fusion"] == "late" and cfg["text"]["encoder"] == "smollm2"


@pytest.mark.parametrize("fusion,mode", [("prefix", "transmamba"), ("late", "scratch")])
def test_end_to_end_run_writes_result(tmp_path, teacher_dir, fusion, mode):
    out = tmp_path / f"{fusion}-{mode}"
    cfg = load_config(None, _args(out, teacher_dir, fusion, ["--mode", mode]), defaults=VQA_DEFAULTS)
    res = train_vqa(cfg, text_encoder=tiny_random_text_encoder_STAND_IN())
    saved = json.loads((out / "result.json").read_text())
    assert saved["steps"] == 4 and saved["fusion"] == fusion and saved["mode"] == mode
    assert saved["distill"] == (mode == "transmamba") and saved["init_layers"] == (mode == "transmamba")
    assert 0 <= saved["test_acc"] <= 1 and np.isfinite(saved["test_loss"])
    assert abs(saved["test_yes_frac"] - 0.5) < 0.01 and abs(saved["train_yes_frac"] - 0.5) < 0.01
    assert saved["config"]["fusion"] == fusion and "losses" not in saved
    assert len(res["losses"]) == 4 and all(np.isfinite(res["losses"]))


def test_vqa_data_matches_the_images(teacher_dir):
    cfg = load_config(None, _args("unused", teacher_dir), defaults=VQA_DEFAULTS)
    data = build_vqa_data(cfg, text_encoder=tiny_random_text_encoder_STAND_IN())
    _, answers, _ = question_bank()
    for split in ("train", "test"):
        x, y, q, a = data[split]
        assert len(x) == len(y) == len(q) == len(a)
        assert torch.equal(torch.from_numpy(answers)[q, y].long(), a)
    assert data["text"].shape[:2] == data["text_mask"].shape and data["text"].shape[0] == 26


def test_cli_help_and_early_config_check(capsys):
    from transmamba.recipes.vqa import train_vqa_main

    assert train_vqa_main(["--help"]) == 0
    assert "fusion" in capsys.readouterr().out
    with pytest.raises(ValueError, match="fusion"):  # refused before any data or model is loaded
        train_vqa_main(["--config", "configs/multimodal/vqa-fmnist.yaml", "--fusion", "bogus"])


def test_bf16_run_through_the_engine(tmp_path, teacher_dir):
    out = tmp_path / "bf16"
    cfg = load_config(None, _args(out, teacher_dir, "modulate", ["--mode", "transmamba", "--train.amp", "bf16"]),
                      defaults=VQA_DEFAULTS)
    res = train_vqa(cfg, text_encoder=tiny_random_text_encoder_STAND_IN())
    assert res["steps"] == 4 and all(np.isfinite(res["losses"])) and np.isfinite(res["test_loss"])
    assert json.loads((out / "result.json").read_text())["config"]["train"]["amp"] == "bf16"
