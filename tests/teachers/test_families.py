"""Every supported HF family converts exactly at full size; everything else is refused, by name."""

import json

import pytest
import torch
import transformers

from transmamba.teachers.families import inspect_teacher
from transmamba.teachers.check import check_model, check_teacher, convert_full_size
from tiny_teachers import TINY_FAMILIES, tiny_config, tiny_teacher

IDS = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("gqa", [True, False])
@pytest.mark.parametrize("name", sorted(TINY_FAMILIES))
def test_full_size_conversion_is_lossless(name, gqa):
    teacher = tiny_teacher(name, gqa)
    student = convert_full_size(teacher)
    with torch.no_grad():
        ref = teacher(IDS).logits
        ours = student(IDS, transpoints=10**6)[0]
        ssm = student(IDS, transpoints=0)[0]  # the Mamba-2 student of the same weights runs
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(ssm).all() and not torch.allclose(ssm, ref, atol=1e-3)


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "mistral", "smollm3", "llama-yarn"])
def test_decoding_past_the_window_matches_the_teacher(name):
    teacher = tiny_teacher(name)
    student = convert_full_size(teacher)
    ids = IDS[:1, :6]
    ours = student.generate(ids, 10, temperature=0, transpoints=10**6)  # prefill + step, KV cache
    with torch.no_grad():  # the teacher's own full forward picks every generated token
        greedy = teacher(ours).logits[0, 5:-1].argmax(-1)
    # (not teacher.generate: HF's cached decoding of Mistral's window disagrees with its own forward)
    assert torch.equal(greedy, ours[0, 6:])


def test_the_features_matter():
    """Negative controls: each family option, dropped, breaks exactness (so the tests above bite)."""
    from transmamba.teachers.to_switch import full_plan, init_from_teacher, switch_config_from_teacher
    from transmamba.models.lm import LM

    teacher = tiny_teacher("gemma2")
    spec = inspect_teacher(teacher.config)
    with torch.no_grad():
        ref = teacher(IDS).logits
        for drop in ({"final_softcap": None}, {"switch_layer_options": []},
                     {"embed_scale": 1.0}, {"mlp_act": "silu"}, {"switch_options": {}}):
            student = LM(switch_config_from_teacher(spec, **drop))
            init_from_teacher(student, teacher, full_plan(spec), spec=spec)
            assert (student.eval()(IDS, transpoints=10**6)[0] - ref).abs().max() > 1e-3, drop


def _llama(**kw):
    return tiny_config("llama", **kw)


@pytest.mark.parametrize("config, feature", [
    (transformers.MixtralConfig(), "mixture-of-experts"),
    (transformers.Qwen2MoeConfig(), "mixture-of-experts"),
    (transformers.T5Config(), "encoder-decoder"),
    (transformers.BloomConfig(), "this model type"),
    (transformers.GPT2Config(), "this model type"),
    (transformers.Gemma3Config(), "multimodal"),
    (_llama(kv_lora_rank=4), "latent attention"),
    (_llama(add_cross_attention=True), "cross-attention"),
    (_llama(alibi=True), "ALiBi"),
    (_llama(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                             "long_factor": [1.0] * 4, "original_max_position_embeddings": 64}), "rope type 'longrope'"),
    (_llama(hidden_act="relu"), "activation 'relu'"),
    (_llama(some_new_switch=3), "some_new_switch"),
    (_llama(pretraining_tp=2), "pretraining_tp"),
    (tiny_config("phi3", rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial rotary"),
    (tiny_config("gemma2", use_bidirectional_attention=True), "bidirectional"),
])
def test_unsupported_is_refused_by_name(config, feature):
    with pytest.raises(ValueError, match=feature) as e:
        inspect_teacher(config)
    assert repr(config.model_type) in str(e.value)


def test_teacher_check_cli(tmp_path, capsys):
    from transmamba.cli import main

    good, bad = tmp_path / "good", tmp_path / "bad"
    tiny_teacher("qwen3").save_pretrained(good)
    transformers.MixtralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64, vocab_size=64).save_pretrained(bad)
    assert main(["teacher", "check", str(good), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["lossless"] and res["model_type"] == "qwen3" and res["unsupported"] == []
    assert res["max_abs_logit_diff"] < 1e-4 and res["n_params"] > 0
    assert main(["teacher", "check", str(bad), "--json"]) == 1  # refused: no weights there to load
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not res["lossless"] and "mixture-of-experts" in res["unsupported"][0]


def test_check_reports_what_is_not_exact():
    from transmamba.teachers.check import compare_logits

    teacher = tiny_teacher("llama")
    assert check_model(teacher)["lossless"]
    student = convert_full_size(teacher)
    with torch.no_grad():
        student.blocks[1].mixer.out_proj.weight[0, 0] += 1e-2  # a slightly wrong student is caught
    diff, scale = compare_logits(teacher, student, IDS)
    assert diff > 1e-4 and diff > 1e-6 * scale
    teacher.config.hidden_act = "relu"  # a config the converter cannot honour: refused, not converted
    res = check_model(teacher)
    assert not res["lossless"] and "activation 'relu'" in res["unsupported"][0]


def test_convert_refuses_before_any_work(tmp_path):
    from transmamba.recipes.convert import convert_main

    bad = tmp_path / "bad"
    transformers.MixtralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64, vocab_size=64).save_pretrained(bad)
    cfg = tmp_path / "student.yaml"
    cfg.write_text("student: {n_layers: 1}\n")
    with pytest.raises(ValueError, match="'mixtral': mixture-of-experts"):
        convert_main(["--teacher", str(bad), "--student", str(cfg), "--quiet", "--out_dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_check_teacher_names_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        check_teacher(tmp_path)
