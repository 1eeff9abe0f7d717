import pytest
import torch


@pytest.fixture(scope="module")
def float64_default():
    """float64 as the default dtype for one test module (the Switch equivalence tests)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
