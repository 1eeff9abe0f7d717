"""Generation against the teacher: agreement metrics on hand-made sequences, the offline task's
generator and exact-match scorer, and a student that is the teacher scoring 100% of it."""

import pytest
from tiny_fixtures import tiny_llama, tiny_tokenizer

from transmamba.evaluation.generation import (agreement, compare_generation, run_generation, score_answer,
                                              task_items)


def test_agreement_on_hand_made_sequences():
    t = [1, 2, 3, 4, 5, 6, 7, 8]
    assert agreement(t, t, 8) == {"prefix": 1.0, "positional": 1.0, "exact": 1}
    s = [1, 2, 9, 4, 5, 6, 9, 8]  # diverges at 2, agrees again later
    assert agreement(s, t, 8) == {"prefix": 2 / 8, "positional": 6 / 8, "exact": 0}
    assert agreement(s, t, 2) == {"prefix": 1.0, "positional": 1.0, "exact": 1}  # only the first 2 tokens
    assert agreement(s, t, 4) == {"prefix": 0.5, "positional": 0.75, "exact": 0}
    # EOS (0) ends a continuation: both ended agree afterwards, one ended disagrees with the other's tokens
    assert agreement([1, 0, 7, 7], [1, 0, 5, 5], 4, eos=0) == {"prefix": 1.0, "positional": 1.0, "exact": 1}
    assert agreement([1, 0], [1, 2, 3, 4], 4, eos=0) == {"prefix": 0.25, "positional": 0.25, "exact": 0}
    assert agreement([1, 2], [1, 2, 3, 4], 4) == {"prefix": 0.5, "positional": 0.5, "exact": 0}  # stopped short
    with pytest.raises(ValueError, match="n >= 1"):
        agreement(s, t, 0)


def test_task_is_deterministic_and_scored_exactly():
    a, b = task_items(6, seed=3), task_items(6, seed=3)
    assert a == b and task_items(6, seed=4) != a
    assert [it["kind"] for it in a] == ["addition", "copy"] * 3
    add, copy = a[0], a[1]
    q = add["prompt"].rsplit("\n", 1)[1]
    x, y = q.removeprefix("Q: ").removesuffix("= A:").split("+")
    assert add["answer"] == str(int(x) + int(y)) and add["prompt"].count("\n") == 3  # 3 solved examples
    words = copy["prompt"].rsplit("\n", 1)[1].removeprefix("Repeat: ").removesuffix(" ->")
    assert copy["answer"] == words and len(words.split()) == 5
    assert score_answer(" 68\nQ: 1+2= A: 3", "68") and score_answer("68 ", "68")
    assert not score_answer(" 681", "68") and not score_answer(" 6 8", "68") and not score_answer("", "68")
    assert not score_answer(" 5\n68", "68") and score_answer("\n68", "68")  # the first non-blank line only
    assert score_answer(" apple river stone cloud green\nRepeat:", "apple river stone cloud green")
    assert not score_answer(" apple river stone cloud", "apple river stone cloud green")


def test_a_student_that_is_the_teacher_scores_100_percent():
    tok = tiny_tokenizer(300)
    teacher = tiny_llama(vocab_size=len(tok))
    kw = dict(lengths=(4, 8), n_plain=3, n_chat=0, n_task=4, task_tokens=4)
    tg = run_generation(teacher, tok, **kw)
    assert set(tg["continuations"]) == {"plain"} and len(tg["continuations"]["plain"]) == 3
    rows = compare_generation(run_generation(teacher, tok, **kw), tg)
    assert [(r["set"], r["tokens"]) for r in rows["agreement"]] == [("plain", 4), ("plain", 8)]
    assert all(r["prefix"] == r["positional"] == r["exact"]["acc"] == 1.0 for r in rows["agreement"])
    other = run_generation(tiny_llama(seed=1, vocab_size=len(tok)), tok, **kw)
    assert compare_generation(other, tg)["agreement"][1]["prefix"] < 1.0  # a different model disagrees
    task = {r["task"]: r for r in rows["task"]}
    assert set(task) == {"all", "addition", "copy"} and task["all"]["student"] == task["all"]["teacher"]
    # a made-up teacher that answers half the questions: a copy of it scores 100% of it
    fake = {**tg, "task": {**tg["task"], "correct": [True, False, True, False]}}
    task = {r["task"]: r for r in compare_generation(fake, fake)["task"]}
    assert task["all"]["pct_of_teacher"] == 100.0 and task["all"]["student"]["acc"] == 0.5
    assert task["all"]["student"]["ci"][0] > 0 and compare_generation(fake, None)["agreement"] is None
