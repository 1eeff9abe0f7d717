import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use small tensors: one intra-op thread avoids OpenMP fork/join overhead and
    oversubscription on a shared 2-core box (about 10x faster there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
