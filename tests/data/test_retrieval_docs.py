"""Synthetic retrieval documents: facts in Shakespeare's training works, asked and answered at the
end; deterministic, about the asked length, a `retrieval` data source that mixes by weight."""

import random
import re

import numpy as np
import pytest

from tiny_fixtures import tiny_tokenizer
from transmamba.data import retrieval_docs as R
from transmamba.data import sources as S
from transmamba.data.text import split_texts


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(300)


def test_a_document_holds_its_facts_and_answers_the_questions_from_them(tok):
    doc = R.fact_document(tok, 400, random.Random(3))
    facts = dict(re.findall(r"Remember: the code for (\w+) is (\d{5})\.", doc))
    asked = re.findall(r"Question: what is the code for (\w+)\? Answer: (\d{5})\.", doc)
    assert len(facts) == R.N_FACTS and len(asked) == R.N_QUESTIONS
    assert all(facts[w] == c for w, c in asked)  # each answer is the code stated earlier
    body = doc[:doc.index("\nQuestion:")]
    assert all(body.index(f"code for {w} is") < doc.index(f"code for {w}?") for w, _ in asked)
    train = " ".join(" ".join(split_texts("train")).split())
    hay = [" ".join(seg.split()) for seg in re.split(r"Remember: the code for \w+ is \d{5}\.", body)]
    longest = max(hay, key=len)
    assert len(longest) > 100 and longest in train  # the haystack is a run of the training works' lines
    n = len(tok.encode(doc, add_special_tokens=False))
    assert 0.8 * 400 <= n <= 1.1 * 400, n


def test_documents_are_deterministic_and_vary_with_seed(tok):
    a = list(R.fact_documents(tok, 4, 100, 200, seed=1))
    assert a == list(R.fact_documents(tok, 4, 100, 200, seed=1))
    assert a != list(R.fact_documents(tok, 4, 100, 200, seed=2))
    assert len({t for _, t in a}) == 4


def test_retrieval_source_mixes_by_weight_and_is_cached(tok, tmp_path):
    for i in range(20):
        (tmp_path / f"d{i}.txt").write_text(f"plain document {i} " * 30)
    spec = [{"retrieval": "facts", "documents": 30, "min_tokens": 80, "max_tokens": 160, "weight": 1, "heldout": 0.2},
            {"files": str(tmp_path / "d*.txt"), "weight": 3, "heldout": 0}]
    ids = S.mixture_ids(spec, tok, "train", tmp_path, n_tokens=20000)
    text = tok.decode(np.asarray(ids).tolist())
    n_ret, n_plain = len(re.findall("Question: what is", text)), len(re.findall("plain document", text))
    assert n_ret > 0 and n_plain > 0 and ids.shape[0] == 20000
    again = S.mixture_ids(spec, tok, "train", tmp_path, n_tokens=20000)
    assert np.array_equal(ids, again)
    val = S.mixture_ids(spec[:1], tok, "val", tmp_path)
    assert "Question: what is the code" in tok.decode(np.asarray(val).tolist())


@pytest.mark.parametrize("spec,msg", [
    ({"retrieval": "facts"}, "needs 'documents'"),
    ({"retrieval": "nope", "documents": 3}, "must be one of"),
    ({"retrieval": "facts", "documents": 0}, "'documents' must be an integer >= 1"),
    ({"retrieval": "facts", "documents": 3, "min_tokens": 900, "max_tokens": 100}, "min_tokens"),
    ({"retrieval": "facts", "documents": 3, "min_tokens": "a lot"}, "'min_tokens' must be an integer"),
    ({"retrieval": "facts", "documents": 3, "length": 5}, "unknown key"),
])
def test_bad_retrieval_source_is_refused_by_name(spec, msg):
    with pytest.raises(ValueError, match=msg):
        S.check_sources([spec])
