import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

# `amp: auto` picks bf16 on CPUs that run it fast (AMX, AVX512-BF16) and fp32 elsewhere; the suite
# pins fp32 so that it computes the same numbers on every machine (subprocesses inherit it). The
# tests of the choice itself (tests/hardware) inject the probe and clear the pin.
os.environ["TRANSMAMBA_AMP"] = "none"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use small tensors: one intra-op thread avoids OpenMP fork/join overhead and
    oversubscription on a shared 2-core box (about 10x faster there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class SavedStudent(NamedTuple):
    """A student saved by `save_hf`: its directory, the LM it holds and its tokenizer."""

    dir: Path
    lm: object
    tok: object


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> SavedStudent:
    """A tiny 2-layer Switch student (d_model 16, TransPoints [0, 40], seed 0, eval mode) with
    `tiny_tokenizer()`, saved once per session for the tests that read a saved student; a test that
    changes the directory works on a `shutil.copytree` of it, and none changes the LM."""
    from tiny_fixtures import tiny_tokenizer

    from transmamba.hf.student import save_hf
    from transmamba.models.lm import LM, LMConfig

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=2, n_heads=1, head_dim=16, d_state=16, chunk_size=4,
                     schedule={"name": "per_layer", "P": [0, 40]})).eval()
    return SavedStudent(save_hf(lm, tmp_path_factory.mktemp("tiny_student") / "student", tok), lm, tok)
