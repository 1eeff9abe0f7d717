"""transmamba.training.rng: the random-number state a run resumes with."""

import json
import random

import numpy as np
import torch

from transmamba.training.rng import get_rng_state, set_rng_state


def test_rng_state_round_trip():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    torch.rand(3)
    state = json.loads(json.dumps(get_rng_state()))  # survives JSON
    a = (torch.rand(4), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(state)
    b = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
