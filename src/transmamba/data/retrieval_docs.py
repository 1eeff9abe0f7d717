"""Synthetic retrieval documents for distillation: facts hidden in real text, asked for at the end.

A student that switches to its SSM past the TransPoint learns from its teacher only what the
training windows show. Shakespeare alone rarely asks a model to recall an exact string from far
back, so the retrieval heads and the SSM heads are never taught to work together on it. A share of
these documents, mixed into the distillation data (`data.sources`: `{"retrieval": "facts", ...}`,
`data/sources.py`), shows the teacher doing exactly that, and the student imitates its outputs.

One document (`fact_document`): N_FACTS facts "Remember: the code for <word> is <5 digits>."
placed at random depths in a run of whole lines of Shakespeare's TRAINING works (the haystack),
then the questions, each answered: "Question: what is the code for <word>? Answer: <digits>."
The document is about `tokens` tokens long under the given tokenizer (the haystack is cut to fit).
The wording and the haystack differ on purpose from the evaluation's passkey ("The pass key is
...", filler sentences), needle (held-out works) and key-value probe ("key 4821: value apple"), so
that an evaluation gain is retrieval, not the memory of a template.

Everything is deterministic in (seed, index, tokens range, tokenizer): `fact_documents(n, ...)`
gives the same documents on every machine.
"""

from __future__ import annotations

import functools
import hashlib
import random

KINDS = ("facts",)
N_FACTS = 3
N_QUESTIONS = 2
WORDS = ("amber", "falcon", "harbor", "lantern", "meadow", "orchid", "quartz", "saffron", "thistle", "velvet",
         "willow", "cobalt", "juniper", "pebble", "sparrow", "tundra", "walnut", "yarrow", "beacon", "cinder",
         "ember", "glacier", "hazel", "ivory", "kestrel", "lagoon", "mosaic", "nectar", "obsidian", "prairie")
FACT = " Remember: the code for {word} is {code}. "
QUESTION = "\nQuestion: what is the code for {word}? Answer: {code}."
FORMAT = 1  # bump when a document's text for the same settings changes


@functools.lru_cache(maxsize=1)
def _haystack_lines() -> tuple[str, ...]:
    from transmamba.data.text import split_texts

    return tuple(line.strip() for text in split_texts("train") for line in text.splitlines() if line.strip())


def fact_document(tok, tokens: int, rng: random.Random) -> str:
    """One document of about `tokens` tokens (see the module docstring); `rng` draws everything."""
    if tokens < 64:
        raise ValueError(f"a retrieval document needs at least 64 tokens, got {tokens}")
    words = rng.sample(WORDS, N_FACTS)
    codes = [f"{rng.randrange(10000, 100000)}" for _ in words]
    facts = [FACT.format(word=w, code=c) for w, c in zip(words, codes)]
    asked = rng.sample(range(N_FACTS), N_QUESTIONS)
    questions = "".join(QUESTION.format(word=words[i], code=codes[i]) for i in asked)
    budget = tokens - len(tok.encode("".join(facts) + questions, add_special_tokens=False))
    lines = _haystack_lines()
    start = rng.randrange(len(lines))
    hay, n = [], 0
    while n < budget:
        line = lines[(start + len(hay)) % len(lines)]
        hay.append(line)
        n += len(tok.encode(" " + line, add_special_tokens=False))
    while hay and n > budget:  # cut back to the budget, whole lines
        n -= len(tok.encode(" " + hay.pop(), add_special_tokens=False))
    depths = sorted(rng.randrange(len(hay) + 1) for _ in facts)
    out, j = [], 0
    for i, line in enumerate(hay + [None]):
        while j < len(facts) and depths[j] == i:
            out.append(facts[j])
            j += 1
        if line is not None:
            out.append(" " + line)
    return "".join(out).strip() + questions


def document_seed(seed: int, index: int) -> int:
    """The RNG seed of document `index` (63 bits of sha256 of both)."""
    return int.from_bytes(hashlib.sha256(f"transmamba-retrieval-doc:{seed}:{index}".encode()).digest()[:8], "big") >> 1


def fact_documents(tok, n: int, min_tokens: int, max_tokens: int, seed: int = 0):
    """(where, text) of `n` documents, document i about uniform[min_tokens, max_tokens] tokens long."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"'documents' must be an integer >= 1, got {n!r}")
    if not (64 <= min_tokens <= max_tokens):
        raise ValueError(f"need 64 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    for i in range(n):
        rng = random.Random(document_seed(seed, i))
        yield f"retrieval document {i} (seed {seed})", fact_document(tok, rng.randint(min_tokens, max_tokens), rng)
