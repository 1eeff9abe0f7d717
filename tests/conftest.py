import os

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
