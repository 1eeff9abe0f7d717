"""Out-of-domain text that ships offline: the licence texts of installed packages, not Shakespeare.

The demo student is distilled on Shakespeare; one row of its report measures perplexity on text in
neither its training nor its held-out data. `ood_documents()` is numpy's LICENSE.txt (its BSD licence
and the licences of the code it bundles, ~46k characters of legal English) and transformers' Apache
2.0 LICENSE, read from their installed distributions' metadata (`importlib.metadata`), so the text
exists on every machine after `make install` and is the same for the same package versions (the
label names them). `ood_ids(tok)` is the documents joined by the tokenizer's document separator.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np

from transmamba.data.text import document_separator, encode, ids_dtype, join_documents

PACKAGES = (("numpy", "LICENSE.txt"), ("transformers", "LICENSE"))


def _licence(dist_name: str, file_name: str):
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"out-of-domain text: package {dist_name!r} is not installed (make install)") from None
    # the top-level licence file of the distribution (licenses/LICENSE.txt or LICENSE.txt), not bundled ones
    cands = sorted((f for f in dist.files or [] if f.name == file_name), key=lambda f: len(f.parts))
    if not cands:
        raise FileNotFoundError(f"out-of-domain text: {dist_name} {dist.version} has no {file_name} in its metadata")
    return f"{dist_name} {dist.version} {file_name}", cands[0].locate().read_text(encoding="utf-8")


def ood_documents() -> tuple[str, list[str]]:
    """(label, documents): the licence texts named in the module docstring, and what they are."""
    got = [_licence(d, f) for d, f in PACKAGES]
    return "software licence texts (" + ", ".join(label for label, _ in got) + ")", [t for _, t in got]


def ood_ids(tok) -> tuple[str, np.ndarray]:
    """(label, token stream) of the out-of-domain documents under `tok`."""
    label, docs = ood_documents()
    dtype = ids_dtype(tok)
    return label, join_documents([np.asarray(x, dtype) for x in encode(tok, docs)], document_separator(tok), dtype)
