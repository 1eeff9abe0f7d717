"""decode_attention (two matmuls) against SDPA (decode_attention_ref): values and gradients."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.ops.decode_attention import decode_attention, decode_attention_ref

F64 = torch.float64


def _inputs(b, kv, r, T, d, e, seed, dtype=F64, cache_layout=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, kv * r, 1, d, generator=gen, dtype=F64).to(dtype)
    if cache_layout:  # views of "b T kv d" caches, as the Switch layer passes them
        k = torch.randn(b, T, kv, d, generator=gen, dtype=F64).to(dtype).transpose(1, 2)
        v = torch.randn(b, T, kv, e, generator=gen, dtype=F64).to(dtype).transpose(1, 2)
    else:
        k = torch.randn(b, kv, T, d, generator=gen, dtype=F64).to(dtype)
        v = torch.randn(b, kv, T, e, generator=gen, dtype=F64).to(dtype)
    return [t.requires_grad_() for t in (q, k, v)]


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), kv=st.integers(1, 3), r=st.sampled_from([1, 2, 3]), T=st.integers(1, 40),
       d=st.integers(1, 9), e=st.integers(1, 9), layout=st.booleans(), seed=st.integers(0, 2**16))
def test_equals_sdpa_values_and_grads(b, kv, r, T, d, e, layout, seed):
    q, k, v = _inputs(b, kv, r, T, d, e, seed, cache_layout=layout)
    scale = 0.3 + seed % 5 * 0.1
    o, o_ref = decode_attention(q, k, v, scale), decode_attention_ref(q, k, v, scale)
    torch.testing.assert_close(o, o_ref)
    cot = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for g, g_ref in zip(torch.autograd.grad(o, (q, k, v), cot), torch.autograd.grad(o_ref, (q, k, v), cot)):
        torch.testing.assert_close(g, g_ref)


def test_float32_long_cache_close_to_float64():
    q, k, v = _inputs(2, 3, 3, 4096, 64, 64, seed=0, cache_layout=True)
    o64 = decode_attention_ref(q, k, v, 0.125)
    o32 = decode_attention(*(t.detach().float() for t in (q, k, v)), 0.125)
    torch.testing.assert_close(o32.double(), o64.detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shapes,match", [
    (((1, 2, 2, 4), (1, 2, 5, 4), (1, 2, 5, 4)), "one query"),
    (((1, 3, 1, 4), (1, 2, 5, 4), (1, 2, 5, 4)), "divisible"),
    (((1, 2, 1, 4), (1, 2, 5, 3), (1, 2, 5, 4)), "must be"),
    (((1, 2, 1, 4), (1, 2, 5, 4), (1, 2, 6, 4)), "must be"),
    (((1, 2, 4), (1, 2, 5, 4), (1, 2, 5, 4)), "rank 4"),
])
def test_bad_shapes_raise(shapes, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        decode_attention(q, k, v, 1.0)
