"""The retrieval probe (`evaluation.retrieval_probe`) and `transmamba heads`: prompts deterministic
from a seed and of the asked length, teacher-forced scores aligned with the answer (an oracle scores
1, a model one token late 0), batching that changes nothing, a teacher ranked through its lossless
conversion, and the CLI's outputs and errors. A tiny BPE tokenizer and tiny random Llama teachers."""

import json

import pytest
import torch
from tiny_fixtures import tiny_llama, tiny_tokenizer

from transmamba.cli import main
from transmamba.evaluation.retrieval_probe import (as_switch_lm, build_kv_prompt, head_report, probe_batches,
                                                   probe_items, rank_heads, score_probe)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_probe_items_are_deterministic_and_of_the_asked_length(tok):
    a = probe_items(tok, lengths=(200, 300), depths=(0.0, 0.5, 1.0), trials=2, seed=3)
    b = probe_items(tok, lengths=(200, 300), depths=(0.0, 0.5, 1.0), trials=2, seed=3)
    c = probe_items(tok, lengths=(200, 300), depths=(0.0, 0.5, 1.0), trials=2, seed=4)
    assert [(x.prompt, x.answer) for x in a] == [(x.prompt, x.answer) for x in b]
    assert [x.answer_text for x in a] != [x.answer_text for x in c]
    assert len(a) == 2 * 2 * 3 * 2 and {x.kind for x in a} == {"kv", "passkey"}
    for it in a:
        assert len(it.prompt) == it.length
        text = tok.decode(it.prompt)
        assert it.answer_text in text and tok.decode(it.answer) == " " + it.answer_text
    import random

    ids, value = build_kv_prompt(tok, 300, 0.0, random.Random(0))
    text = tok.decode(ids)
    key = text.rsplit("of key ", 1)[1].split(" ")[0]
    assert f"key {key}: value {value}." in text  # the asked key holds the answer
    first = text.index(" key ")
    assert text[first:].startswith(f" key {key}:")  # depth 0: the asked pair comes first


def test_scores_are_aligned_with_the_answer_and_batching_changes_nothing(tok):
    items = probe_items(tok, lengths=(60, 90), depths=(0.0, 1.0), trials=2)

    def oracle(ids, late=0):  # puts all its mass on the next token (late=1: on the token after it)
        z = torch.full((*ids.shape, len(tok)), -30.0)
        nxt = torch.roll(ids, -1 - late, dims=1)
        return z.scatter(-1, nxt[..., None], 30.0)

    right = score_probe(oracle, items, batch_size=3)
    assert right["kv"]["acc"] == right["passkey"]["acc"] == 1.0 and abs(right["kv"]["logp"]) < 1e-20
    assert right["kv"]["by_length"][0]["ci"] == pytest.approx([4 / (4 + 1.96 ** 2), 1.0], abs=1e-4)  # 4 of 4
    late = score_probe(lambda x: oracle(x, 1), items, batch_size=3)
    assert late["kv"]["acc"] == 0.0 and late["kv"]["logp"] < -50
    model = tiny_llama(vocab_size=len(tok))
    one = score_probe(lambda x: model(x).logits, items, batch_size=1)
    many = score_probe(lambda x: model(x).logits, items, batch_size=5)  # right padding: causal, unseen
    for kind in ("kv", "passkey"):
        assert many[kind]["logp"] == pytest.approx(one[kind]["logp"], abs=1e-4)
        assert many[kind]["hits"] == one[kind]["hits"]
    batches = probe_batches(items, 3)
    assert [len(b) for b in batches] == [3, 3, 3, 3, 3, 1] and batches[0].ids.shape[1] == max(
        len(it.prompt) + len(it.answer) for it in items[:3])


def test_a_teacher_is_ranked_through_its_lossless_conversion(tok):
    teacher = tiny_llama(vocab_size=len(tok))
    kw = dict(lengths=(64,), depths=(0.0, 1.0), trials=1)
    res = head_report(teacher, tok, **kw)
    assert rank_heads(teacher, tok, **kw) == res["ranking"]
    assert res["converted"] and res["n_kv_heads"] == [2, 2] and len(res["ranking"]) == 4
    scores = [s for _, _, s in res["ranking"]]
    assert scores == sorted(scores, reverse=True) and max(map(abs, scores)) > 0
    lm, _ = as_switch_lm(teacher, seed=0)  # the SSM-only parameters (dt, A, z) from the same seed
    again = head_report(lm, tok, **kw)  # the same numbers on the converted LM itself
    assert not again["converted"]
    assert [r[:2] for r in again["ranking"]] == [r[:2] for r in res["ranking"]]
    assert [r[2] for r in again["ranking"]] == pytest.approx(scores, abs=1e-6)
    assert res["base"]["logp"] == pytest.approx(score_probe(lambda x: teacher(x).logits, probe_items(tok, **kw))
                                                ["kv"]["logp"] / 2 + score_probe(lambda x: teacher(x).logits,
                                                probe_items(tok, **kw))["passkey"]["logp"] / 2, abs=1e-4)
    other = head_report(teacher, tok, **kw, seed=1)  # another probe and another draw of the SSM paths
    assert [r[2] for r in other["ranking"]] != pytest.approx(scores, abs=1e-6)
    cost = head_report(teacher, tok, by="switch_cost", lengths=(48,), trials=2)
    assert cost["transpoints"] == [0, 0] and all(s > 0 for _, _, s in cost["ranking"])
    with pytest.raises(ValueError, match="retrieval"):
        rank_heads(teacher, tok, by="nope")
    with pytest.raises(ValueError, match="kinds"):
        rank_heads(teacher, tok, kinds=("needle",))


def test_heads_cli_ranks_a_teacher_and_a_student_and_writes_a_heat_map(tok, tmp_path, capsys):
    from transmamba.hf.student import save_hf

    teacher = tiny_llama(vocab_size=len(tok))
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "heads"
    args = ["--lengths", "48", "--trials", "1", "--depths", "0", "1"]
    assert main(["heads", str(tmp_path / "teacher"), *args, "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model_kind"] == "teacher" and len(res["ranking"]) == 4
    assert (out / "heads.png").stat().st_size > 0 and json.loads((out / "ranking.json").read_text())["ranking"]
    lm, _ = as_switch_lm(teacher)
    save_hf(lm, tmp_path / "student", tok)
    assert main(["heads", str(tmp_path / "student"), *args, "--by", "switch_cost", "--top", "2",
                 "--out", str(tmp_path / "h2")]) == 0
    printed = capsys.readouterr().out
    assert "KL rise" in printed and len([ln for ln in printed.splitlines() if ln.startswith("   ")]) == 2
    assert (tmp_path / "h2" / "heads.png").exists()


def test_heads_cli_bad_input_is_an_error_and_writes_nothing(tok, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["heads", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    d = tmp_path / "empty"
    d.mkdir()
    assert main(["heads", str(d), "--out", str(out)]) == 2  # no config.json, no checkpoint, no tokenizer
    assert "error:" in capsys.readouterr().err
    for bad in (["--by", "random"], ["--trials", "0"], ["--lengths", "x"]):  # argparse: usage, error:, exit 2
        with pytest.raises(SystemExit) as e:
            main(["heads", str(d), *bad, "--out", str(out)])
        assert e.value.code == 2 and "error:" in capsys.readouterr().err
    assert main(["heads", str(d), "--depths", "1.5", "--out", str(out)]) == 2
    assert "depths" in capsys.readouterr().err
    assert not out.exists()
