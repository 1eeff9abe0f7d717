"""Random SSD-shaped inputs shared by the ops tests (ssd, memory converter, validate), and `grads`."""

import torch
import torch.nn.functional as F

F64 = torch.float64


def ssd_inputs(b, l, h, p, g, n, *, dtype=F64, seed=0, D=False, init=False, grad=False):
    """Random SSD inputs; dt = softplus(.) > 0 and A < 0 as in a Mamba-2 layer.

    x "b l h p", dt "b l h", A "h", B and C "b l g n", D "h" (None unless D), initial_state
    "b h p n" (None unless init): drawn in float64 from one seeded generator, then cast to dtype.
    """
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    args = {
        "x": r(b, l, h, p),
        "dt": F.softplus(r(b, l, h) - 1.0),
        "A": -torch.rand(h, generator=gen, dtype=F64) * 2 - 0.05,
        "B": r(b, l, g, n),
        "C": r(b, l, g, n),
        "D": r(h) if D else None,
        "initial_state": r(b, h, p, n) if init else None,
    }
    return {k: (None if v is None else v.to(dtype).requires_grad_(grad)) for k, v in args.items()}


def grads(out, inputs, seed=0):
    """d(<out, g>)/d inputs for a fixed random cotangent g (None for unused inputs)."""
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g, allow_unused=True)
