"""Generation measured against the teacher, and a small generative task scored by exact match.

Log-likelihood can hide what generation shows (Kostelec et al., "When Perplexity Lies"): a student
close to its teacher's perplexity may still continue a prompt differently. Here both models decode
greedily (`generate(do_sample=False)`, one prompt at a time, no padding) and their continuations are
compared token by token.

Agreement of a student continuation s with the teacher's t at n new tokens: each is cut at its first
EOS (kept) and then extended with an "ended" marker to n positions, so two continuations that both
stopped at the same place agree on every position after it. Then

- `prefix` = (length of the common prefix of s[:n] and t[:n]) / n: the fraction of positions equal
  up to the first divergence (1 when nothing diverges);
- `positional` = (number of i < n with s[i] == t[i]) / n: the fraction of equal tokens position by
  position (after a divergence, later positions may agree again);
- `exact` = 1 when s[:n] == t[:n] (prefix == 1), else 0; its mean over prompts is the exact-match
  rate, given with its 95% Wilson interval.

Greedy decoding is prefix-consistent, so each model decodes max(ns) tokens once and the agreement at
every n in ns is read from that one continuation.

The generative task is built offline and deterministically from a seed (`task_items`): 2-digit
addition ("Q: 23+45= A: 68") and copy/recall ("Repeat: w1 w2 w3 w4 w5 -> w1 w2 w3 w4 w5", words
from a fixed list), each question preceded by 3 solved examples of its kind. `score_answer`: the
continuation, stripped, then its first line split on whitespace; its first k words (k = the answer's word
count) joined by single spaces must equal the answer exactly. Accuracy with its 95% Wilson interval,
and % of teacher (`evaluation.intervals`).
"""

from __future__ import annotations

import random

import torch

from transmamba.evaluation.intervals import accuracy, pct_of_teacher

ENDED = -1  # the marker past a continuation's EOS

PLAIN_PROMPTS = ("The history of the city begins", "Here is a short recipe for bread:", "In mathematics, a prime number",
                 "The weather today is", "Once upon a time, in a small village,", "def fibonacci(n):",
                 "The most important thing about learning a language is", "Dear team, I am writing to",
                 "Water boils at", "The three primary colours are", "My favourite book is",
                 "The capital of France is")
CHAT_PROMPTS = ("What is the capital of France?", "Give me three tips for sleeping better.",
                "Write a haiku about the sea.", "Explain what a prime number is.", "How do I boil an egg?",
                "Name a famous painter and one of their works.")
WORDS = ("apple", "river", "stone", "cloud", "green", "table", "music", "horse", "light", "paper", "garden",
         "winter", "bread", "silver", "window", "forest", "candle", "ocean", "yellow", "market")


def _pad(seq, n: int, eos: int | None) -> list[int]:
    seq = list(seq)[:n]
    if eos is not None and eos in seq:
        seq = seq[:seq.index(eos) + 1]
    return seq + [ENDED] * (n - len(seq))


def agreement(student, teacher, n: int, eos: int | None = None) -> dict:
    """{"prefix", "positional", "exact"} of two continuations at n new tokens (module docstring)."""
    if n < 1:
        raise ValueError(f"agreement needs n >= 1 tokens, got {n}")
    s, t = _pad(student, n, eos), _pad(teacher, n, eos)
    same = [a == b for a, b in zip(s, t)]
    prefix = next((i for i, x in enumerate(same) if not x), n)
    return {"prefix": prefix / n, "positional": sum(same) / n, "exact": int(prefix == n)}


def prompt_sets(tok, n_plain: int, n_chat: int) -> dict[str, list[list[int]]]:
    """{"plain": token ids of the first n_plain plain prompts, "chat": of the first n_chat chat
    prompts rendered with the tokenizer's chat template (absent when it has none)}."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    sets = {"plain": [bos + tok(p, add_special_tokens=False)["input_ids"] for p in PLAIN_PROMPTS[:n_plain]]}
    if getattr(tok, "chat_template", None) and n_chat > 0:
        sets["chat"] = [list(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                                     add_generation_prompt=True, return_dict=False))
                        for p in CHAT_PROMPTS[:n_chat]]
    return sets


def task_items(n: int, seed: int = 0) -> list[dict]:
    """n questions, alternately addition and copy/recall: [{"kind", "prompt", "answer"}] (deterministic)."""
    rng = random.Random(seed)

    def add():
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"Q: {a}+{b}= A:", str(a + b)

    def copy():
        words = " ".join(rng.sample(WORDS, 5))
        return f"Repeat: {words} ->", words

    items = []
    for i in range(n):
        kind, make = ("addition", add) if i % 2 == 0 else ("copy", copy)
        shots = [make() for _ in range(3)]
        q, a = make()
        prompt = "".join(f"{sq} {sa}\n" for sq, sa in shots) + q
        items.append({"kind": kind, "prompt": prompt, "answer": a})
    return items


def score_answer(continuation: str, answer: str) -> bool:
    """Exact match of the answer against the continuation's first words (module docstring)."""
    lines = continuation.strip().split("\n")
    words = lines[0].split() if lines else []
    k = len(answer.split())
    return " ".join(words[:k]) == answer


@torch.no_grad()
def greedy(model, ids: list[int], n: int, pad_id: int | None) -> list[int]:
    """The greedy continuation (new tokens only, up to n; shorter when EOS comes first)."""
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         pad_token_id=pad_id)
    return out[0, x.shape[1]:].tolist()


def run_generation(model, tok, *, lengths=(32, 128), n_plain: int = 12, n_chat: int = 6, n_task: int = 40,
                   task_tokens: int = 12, seed: int = 0) -> dict:
    """One model's greedy continuations of the prompt sets and its answers to the task:
    {"lengths", "continuations": {set: [ids]}, "task": {"items", "answers", "correct", by kind}}."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = max(lengths)
    conts = {name: [greedy(model, p, n, pad) for p in prompts]
             for name, prompts in prompt_sets(tok, n_plain, n_chat).items()}
    items = task_items(n_task, seed)
    answers, correct = [], []
    for it in items:
        ids = tok(it["prompt"], add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
        text = tok.decode(greedy(model, ids, task_tokens, pad), skip_special_tokens=True)
        answers.append(text)
        correct.append(score_answer(text, it["answer"]))
    return {"lengths": list(lengths), "eos": tok.eos_token_id, "continuations": conts,
            "task": {"answers": answers, "correct": correct, "kinds": [it["kind"] for it in items]}}


def task_accuracy(gen: dict) -> dict:
    """{"all": accuracy(...), "<kind>": accuracy(...)} of a `run_generation` result."""
    correct, kinds = gen["task"]["correct"], gen["task"]["kinds"]
    out = {"all": accuracy(sum(correct), len(correct))}
    for kind in sorted(set(kinds)):
        c = [x for x, k in zip(correct, kinds) if k == kind]
        out[kind] = accuracy(sum(c), len(c))
    return out


def compare_generation(student: dict, teacher: dict | None) -> dict:
    """The generation rows of the report: {"agreement": [{"set", "tokens", "prefix", "positional",
    "exact": accuracy(...)}] (None without a teacher), "task": [{"task", "student", "teacher",
    "pct_of_teacher"}]}."""
    rows = []
    if teacher is not None:
        for name, conts in student["continuations"].items():
            tconts = teacher["continuations"].get(name)
            if tconts is None:
                continue
            for n in student["lengths"]:
                a = [agreement(s, t, n, teacher["eos"]) for s, t in zip(conts, tconts)]
                rows.append({"set": name, "tokens": n, "prefix": sum(x["prefix"] for x in a) / len(a),
                             "positional": sum(x["positional"] for x in a) / len(a),
                             "exact": accuracy(sum(x["exact"] for x in a), len(a))})
    s_acc = task_accuracy(student)
    t_acc = task_accuracy(teacher) if teacher is not None else {}
    task = [{"task": k, "student": v, "teacher": t_acc.get(k),
             "pct_of_teacher": pct_of_teacher(v["acc"], t_acc[k]["acc"]) if k in t_acc else None}
            for k, v in s_acc.items()]
    return {"agreement": rows if teacher is not None else None, "task": task}
