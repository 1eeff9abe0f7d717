"""Mixers (Mamba2, Mamba1, CausalSelfAttention) and small modules: prefill + step == one forward,
chunked forward with a cache == forward at once, fast module == composition of reference ops
(values and grads), HF parity for Mamba1 / Llama attention / SwiGLU, bad input, and the guard
rails every mixer (the Switch mixer too) shares: empty batches/lengths, NaN/Inf, A >= 0, gradients."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.modules.attention import CausalSelfAttention
from transmamba.modules.cache import KVCache, Mamba1Cache, Mamba2Cache
from transmamba.modules.mamba1 import Mamba1
from transmamba.modules.mamba2 import Mamba2
from transmamba.modules.mlp import SwiGLU
from transmamba.modules.norm import GatedRMSNorm, RMSNorm
from transmamba.ops.conv1d import causal_conv1d_ref
from transmamba.ops.norm import gated_rms_norm_ref
from transmamba.ops.selective_scan import selective_scan_ref
from transmamba.ops.ssd import ssd_ref

F64 = torch.float64
D_MODEL = 16
SETTINGS = settings(max_examples=10, deadline=None)


def _perturb(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init (ones/zeros) so that each one matters in the checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


MIXERS = {
    "mamba2": lambda: Mamba2(D_MODEL, d_state=8, headdim=8, ngroups=1, chunk_size=4, dtype=F64),
    "mamba2_groups": lambda: Mamba2(D_MODEL, d_state=4, headdim=4, ngroups=2, chunk_size=5,
                                    dtype=F64),
    "mamba1": lambda: Mamba1(D_MODEL, d_state=4, chunk_size=4, dtype=F64),
    "attn_gqa": lambda: CausalSelfAttention(D_MODEL, 4, 2, rope_theta=100.0, dtype=F64),
    "attn_mha_hd": lambda: CausalSelfAttention(D_MODEL, 2, head_dim=6, bias=True, dtype=F64),
}
_BUILT: dict = {}


def _mixer(name: str):
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = _perturb(MIXERS[name]())
    return _BUILT[name]


def _alloc(m, b, max_len, grow):
    if isinstance(m, CausalSelfAttention) and grow:
        return m.allocate_cache(b, None)
    return m.allocate_cache(b, max_len)


@pytest.mark.parametrize("name", list(MIXERS))
@SETTINGS
@given(T=st.integers(0, 9), n_steps=st.integers(1, 5), b=st.integers(1, 2), grow=st.booleans(),
       seed=st.integers(0, 999))
def test_prefill_then_steps_equals_full_forward(name, T, n_steps, b, grow, seed):
    m = _mixer(name)
    torch.manual_seed(seed)
    x = torch.randn(b, T + n_steps, D_MODEL, dtype=F64)
    with torch.no_grad():
        full = m(x)
        cache = _alloc(m, b, T + n_steps, grow)
        ys = [m(x[:, :T], cache)]
        ys += [m.step(x[:, t], cache)[:, None] for t in range(T, T + n_steps)]
    torch.testing.assert_close(torch.cat(ys, 1), full)
    assert (cache.length if isinstance(cache, KVCache) else cache.seqlen) == T + n_steps


@pytest.mark.parametrize("name", list(MIXERS))
@SETTINGS
@given(cuts=st.lists(st.integers(0, 14), min_size=1, max_size=3), grow=st.booleans(),
       seed=st.integers(0, 999))
def test_chunked_forward_with_cache_equals_forward(name, cuts, grow, seed):
    m = _mixer(name)
    torch.manual_seed(seed)
    L = 14
    x = torch.randn(2, L, D_MODEL, dtype=F64)
    bounds = [0] + sorted(cuts) + [L]
    with torch.no_grad():
        full = m(x)
        cache = _alloc(m, 2, L, grow)
        ys = [m(x[:, s:e], cache) for s, e in zip(bounds[:-1], bounds[1:])]
    torch.testing.assert_close(torch.cat(ys, 1), full)


def test_cache_shapes_and_reset():
    m2, m1 = _mixer("mamba2_groups"), _mixer("mamba1")
    c2 = m2.allocate_cache(3)
    assert isinstance(c2, Mamba2Cache)
    assert c2.conv_state.shape == (3, m2.d_inner + 2 * 2 * 4, 3)
    assert c2.ssm_state.shape == (3, m2.nheads, 4, 4)
    c1 = m1.allocate_cache(2)
    assert isinstance(c1, Mamba1Cache) and c1.ssm_state.shape == (2, m1.d_inner, 4)
    x = torch.randn(3, 5, D_MODEL, dtype=F64)
    with torch.no_grad():
        y = m2(x, c2)
        c2.reset()
        torch.testing.assert_close(m2(x, c2), y)  # a reset cache behaves like a fresh one
    a = _mixer("attn_gqa")
    kv = a.allocate_cache(3, max_len=6)
    assert kv.k.shape == (3, 2, 6, 4)
    with torch.no_grad():
        a(x, kv)
        with pytest.raises(ValueError, match="max_len"):
            a(x[:, :2], kv)


# ------------------------------------------------------------------ fast module == reference ops
def _mamba2_ref(m: Mamba2, x):
    z, xBC, dt = F.linear(x, m.in_proj.weight, m.in_proj.bias).split(
        [m.d_inner, m.conv_dim, m.nheads], dim=-1)
    xBC = causal_conv1d_ref(xBC, m.conv1d.weight[:, 0], m.conv1d.bias, activation="silu")
    xs, B, C = xBC.split([m.d_inner, m.ngroups * m.d_state, m.ngroups * m.d_state], dim=-1)
    b, l, _ = x.shape
    y = ssd_ref(xs.reshape(b, l, m.nheads, m.headdim), F.softplus(dt + m.dt_bias), -torch.exp(m.A_log),
                B.reshape(b, l, m.ngroups, m.d_state), C.reshape(b, l, m.ngroups, m.d_state), D=m.D)
    y = gated_rms_norm_ref(y.reshape(b, l, -1), z, m.norm.weight, group_size=m.d_inner // m.ngroups,
                           eps=m.norm.eps)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


def _mamba1_ref(m: Mamba1, x):
    xs, z = F.linear(x, m.in_proj.weight).chunk(2, dim=-1)
    xs = causal_conv1d_ref(xs, m.conv1d.weight[:, 0], m.conv1d.bias, activation="silu")
    dt, B, C = F.linear(xs, m.x_proj.weight).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = F.softplus(F.linear(dt, m.dt_proj.weight, m.dt_proj.bias))
    y = selective_scan_ref(xs, delta, -torch.exp(m.A_log), B, C, D=m.D, z=z)
    return F.linear(y, m.out_proj.weight)


def _attn_ref(m: CausalSelfAttention, x):
    """softmax(q k^T / sqrt(d) + causal) v per head, written out with explicit RoPE rotation."""
    b, l, _ = x.shape
    d, h, hk = m.head_dim, m.n_heads, m.n_kv_heads
    q = m.q_proj(x).view(b, l, h, d)
    k = m.k_proj(x).view(b, l, hk, d)
    v = m.v_proj(x).view(b, l, hk, d)
    pos = torch.arange(l, dtype=F64)
    ang = pos[:, None] * m.rope_theta ** (-torch.arange(0, d, 2, dtype=F64) / d)  # l, d/2
    cos, sin = torch.cos(ang)[:, None], torch.sin(ang)[:, None]

    def rot(t):  # pairs (j, j + d/2) rotated by angle j
        t1, t2 = t[..., : d // 2], t[..., d // 2:]
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)

    q, k = rot(q), rot(k)
    out = torch.empty(b, l, h, d, dtype=x.dtype)
    causal = torch.ones(l, l, dtype=torch.bool).tril()
    for i in range(h):
        j = i // (h // hk)
        s = torch.einsum("bld,bmd->blm", q[:, :, i], k[:, :, j]) / math.sqrt(d)
        out[:, :, i] = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v[:, :, j]
    return m.o_proj(out.reshape(b, l, h * d))


REFS = {"mamba2": _mamba2_ref, "mamba2_groups": _mamba2_ref, "mamba1": _mamba1_ref,
        "attn_gqa": _attn_ref, "attn_mha_hd": _attn_ref}


@pytest.mark.parametrize("name", list(MIXERS))
def test_module_matches_reference_values_and_grads(name):
    m = _mixer(name)
    torch.manual_seed(1)
    x = torch.randn(2, 11, D_MODEL, dtype=F64, requires_grad=True)
    y, y_r = m(x), REFS[name](m, x)
    torch.testing.assert_close(y, y_r)
    ins = [x] + list(m.parameters())
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, ins, g), torch.autograd.grad(y_r, ins, g)):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------ HF parity
def test_mamba1_matches_hf_mixer():
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(0)
    cfg = MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, num_hidden_layers=1,
                      use_mambapy=False)
    hf = _perturb(MambaMixer(cfg, 0)).eval()
    m = Mamba1.from_hf_mixer(hf)
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), hf(x), atol=1e-4, rtol=1e-4)


def test_attention_and_mlp_match_hf_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=48, rope_theta=10000.0, attn_implementation="sdpa")
    hf = LlamaAttention(cfg, 0).eval()
    ours = CausalSelfAttention(32, 4, 2, rope_theta=10000.0)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(2, 9, 32)
    pos = torch.arange(9)[None].expand(2, -1)
    with torch.no_grad():
        want, _ = hf(x, position_embeddings=LlamaRotaryEmbedding(cfg)(x, pos), attention_mask=None)
        torch.testing.assert_close(ours(x), want, atol=1e-5, rtol=1e-4)
    mlp, ours_mlp = LlamaMLP(cfg), SwiGLU(32, 48)
    ours_mlp.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours_mlp(x), mlp(x))


def test_norm_modules():
    torch.manual_seed(0)
    n = _perturb(RMSNorm(6, eps=1e-6).double())
    x = torch.randn(3, 6, dtype=F64)
    torch.testing.assert_close(n(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * n.weight)
    gn = _perturb(GatedRMSNorm(6, group_size=3).double())
    z = torch.randn(3, 6, dtype=F64)
    torch.testing.assert_close(gn(x, z), gated_rms_norm_ref(x, z, gn.weight, group_size=3, eps=1e-5))
    with pytest.raises(ValueError, match="group_size"):
        GatedRMSNorm(6, group_size=4)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", list(MIXERS))
def test_bad_input_raises_value_error(name):
    m = _mixer(name)
    with pytest.raises(ValueError, match="x"):
        m(torch.randn(2, D_MODEL, dtype=F64))  # wrong rank
    with pytest.raises(ValueError, match="x"):
        m(torch.randn(2, 3, D_MODEL + 1, dtype=F64))  # wrong width
    cache = m.allocate_cache(2, 8)
    with pytest.raises(ValueError, match="x_t"):
        m.step(torch.randn(2, 1, D_MODEL, dtype=F64), cache)
    with pytest.raises(ValueError, match="x_t"):
        m.step(torch.randn(2, D_MODEL - 1, dtype=F64), cache)
    with pytest.raises(ValueError, match="batch"):
        m(torch.randn(3, 2, D_MODEL, dtype=F64), cache)


@pytest.mark.parametrize("name", ["mamba2_groups", "mamba1", "attn_gqa"])
def test_bfloat16_runs_and_tracks_float64(name):
    m64 = _mixer(name)
    m16 = MIXERS[name]().to(torch.bfloat16)
    m16.load_state_dict(m64.state_dict())
    x = torch.randn(2, 9, D_MODEL, dtype=F64)
    with torch.no_grad():
        want = m64(x)
        y = m16(x.bfloat16())
        cache = m16.allocate_cache(2, 9)
        y_steps = torch.cat([m16(x[:, :5].bfloat16(), cache)]
                            + [m16.step(x[:, t].bfloat16(), cache)[:, None] for t in range(5, 9)], 1)
    assert y.dtype == torch.bfloat16 and y_steps.dtype == torch.bfloat16
    scale = want.abs().max()
    assert (y.double() - want).abs().max() < 0.05 * scale
    assert (y_steps.double() - want).abs().max() < 0.05 * scale


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(16, headdim=5)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(16, headdim=8, ngroups=3)
    with pytest.raises(ValueError, match="n_kv_heads"):
        CausalSelfAttention(16, 4, 3)
    with pytest.raises(ValueError, match="dt_init"):
        Mamba1(16, dt_init="bogus")


# ------------------------------------------------------------------------------------ guard rails
def _switch():
    from transmamba.modules.switch import SwitchConfig, SwitchMixer

    torch.manual_seed(0)
    return SwitchMixer(SwitchConfig(d_model=D_MODEL, n_heads=4, n_kv_heads=2, head_dim=4, chunk_size=4,
                                    transpoint=3)).double()


ALL_MIXERS = {**{k: (lambda k=k: _mixer(k)) for k in MIXERS}, "switch": _switch}


@pytest.mark.parametrize("name", list(ALL_MIXERS))
def test_empty_batch_and_length_give_empty_outputs(name):
    m = ALL_MIXERS[name]()
    for b, L in [(0, 7), (2, 0), (0, 0)]:
        x = torch.randn(b, L, D_MODEL, dtype=F64)
        assert m(x).shape == (b, L, D_MODEL)
        assert m(x, cache=m.allocate_cache(b, 8)).shape == (b, L, D_MODEL)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", list(ALL_MIXERS))
def test_non_finite_input_is_a_value_error(name, bad):
    m = ALL_MIXERS[name]()
    x = torch.randn(2, 6, D_MODEL, dtype=F64)
    x[1, 2, 3] = bad
    with pytest.raises(ValueError, match="contains (NaN|Inf)"):
        m(x)
    cache = m.allocate_cache(2, 8)
    with pytest.raises(ValueError, match="contains (NaN|Inf)"):
        m.step(x[:, 2], cache)


@pytest.mark.parametrize("name", ["mamba2", "mamba1", "switch"])
def test_a_decay_rate_of_zero_is_refused(name):
    """A = -exp(A_log) underflows to -0.0 for a huge negative A_log: refused as A >= 0, not a silent
    never-decaying state."""
    m = copy.deepcopy(ALL_MIXERS[name]())
    with torch.no_grad():
        m.A_log.view(-1)[0] = -1e4
    if name == "switch":
        x = torch.randn(2, 6, D_MODEL, dtype=F64)
        with pytest.raises(ValueError, match="^A must be negative"):
            m(x, transpoint=0)
    else:
        with pytest.raises(ValueError, match="^A must be negative"):
            m(torch.randn(2, 6, D_MODEL, dtype=F64))


@pytest.mark.parametrize("name", list(ALL_MIXERS))
def test_gradients_still_flow_with_the_checks(name):
    from transmamba.ops.validate import finite_checks

    m = copy.deepcopy(ALL_MIXERS[name]())
    x = torch.randn(2, 7, D_MODEL, dtype=F64)
    grads = {}
    for on in (True, False):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        with finite_checks(on):
            m(xi).square().sum().backward()
        grads[on] = [xi.grad] + [p.grad for p in m.parameters() if p.grad is not None]
    assert len(grads[True]) > 1 and all(torch.isfinite(g).all() for g in grads[True])
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
