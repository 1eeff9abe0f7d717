"""Head-level TransPoints of the TransMamba-Switch layer, float64, against slow references built
from the same weights (tests/switch_refs.py): each KV head (with its query heads) is attention
before its P and the pure SSM from its P on; all heads equal is today's layer bit for bit;
prefill + step == forward with heads crossing at different steps; gradients; the cache frees a
group's K/V once its heads crossed; each group of heads runs only its own path; and the same
through the LM (schedules, padding, caches)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from switch_refs import attention_ref, ssm_ref
from transmamba.modules import switch as switch_module
from transmamba.modules.head_transpoints import HeadTransPoints
from transmamba.modules.schedule import ATTENTION_ONLY
from transmamba.modules.switch import SwitchConfig, SwitchMixer

A = ATTENTION_ONLY


pytestmark = pytest.mark.usefixtures("float64_default")  # tests/modules/conftest.py


def make(h=4, g=2, n=8, d=16, rope=True, use_D=False, chunk=8, seed=0, **kw):
    torch.manual_seed(seed)
    m = SwitchMixer(SwitchConfig(d_model=d, n_heads=h, n_kv_heads=g, head_dim=n, rope=rope, use_D=use_D,
                                 chunk_size=chunk, **kw))
    with torch.no_grad():  # make every parameter matter
        m.conv_bias.normal_(0, 0.1)
        m.norm_weight.normal_(1, 0.1)
        m.dt_bias.normal_(-1, 0.5)
        if m.D is not None:
            m.D.normal_(0, 1)
    return m


def before_out_proj(m, fn):
    """fn(m) with out_proj the identity: the per-head outputs "b l (h p)"."""
    out = m.out_proj
    m.out_proj = torch.nn.Identity()
    try:
        return fn(m)
    finally:
        m.out_proj = out


def per_row_heads(m, P, b):
    """P (g ints, or "b g") -> "b h": each query head's TransPoint (that of its KV head)."""
    P = torch.as_tensor(list(P.P) if isinstance(P, HeadTransPoints) else P)
    P = P.expand(b, m.g) if P.dim() == 1 else P
    return P.repeat_interleave(m.h // m.g, 1)


def heads_ref(m, u, P):
    """The slow reference before out_proj: head i is the pure attention layer's head i at t < P_i
    and the pure SSM layer's head i at t >= P_i."""
    att = before_out_proj(m, lambda m: attention_ref(m, u)).unflatten(-1, (m.h, m.p))
    ssm = before_out_proj(m, lambda m: ssm_ref(m, u)).unflatten(-1, (m.h, m.p))
    b, L = u.shape[:2]
    use_att = torch.arange(L)[None, :, None] < per_row_heads(m, P, b)[:, None, :]  # b l h
    return torch.where(use_att[..., None], att, ssm).flatten(-2)


HG = [(4, 2), (4, 4), (6, 3), (8, 4)]


@st.composite
def head_points(draw, g, L, b):
    """Per-head P: g ints in [0, L + 2] or ATTENTION_ONLY, or (one in three) a "b g" tensor."""
    pick = st.one_of(st.integers(0, L + 2), st.just(A))
    if draw(st.integers(0, 2)) == 0:
        return torch.tensor([[draw(pick) for _ in range(g)] for _ in range(b)])
    return HeadTransPoints(tuple(draw(pick) for _ in range(g)))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 30), st.sampled_from(HG), st.booleans(), st.booleans(), st.data())
def test_each_head_equals_its_pure_layer_on_each_side_of_its_transpoint(b, L, hg, rope, use_D, data):
    h, g = hg
    m = make(h=h, g=g, rope=rope, use_D=use_D)
    u = torch.randn(b, L, 16)
    P = data.draw(head_points(g, L, b))
    y = before_out_proj(m, lambda m: m(u, transpoint=P))
    torch.testing.assert_close(y, heads_ref(m, u, P), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("opts", [dict(qk_norm="head", bias=True), dict(sliding_window=3),
                                  dict(attn_softcap=5.0, attn_scale=0.2)])
def test_each_head_equals_its_pure_layer_with_switch_options(opts):
    m = make(h=6, g=3, **opts)
    u = torch.randn(2, 17, 16)
    P = HeadTransPoints((0, A, 6))
    torch.testing.assert_close(before_out_proj(m, lambda m: m(u, transpoint=P)), heads_ref(m, u, P),
                               atol=1e-10, rtol=1e-8)


def test_all_heads_equal_is_todays_layer_bit_for_bit():
    m = make(h=6, g=3)
    u = torch.randn(2, 21, 16)
    for P in (0, 7, 21, A):
        torch.testing.assert_close(m(u, transpoint=HeadTransPoints((P,) * 3)), m(u, transpoint=P), rtol=0, atol=0)
        torch.testing.assert_close(m(u, transpoint=torch.tensor([[P] * 3, [P] * 3])), m(u, transpoint=P),
                                   rtol=0, atol=0)
    rows = torch.tensor([4, 15])  # every head equal per row: today's per-row path
    torch.testing.assert_close(m(u, transpoint=rows[:, None].expand(2, 3)), m(u, transpoint=rows), rtol=0, atol=0)
    c_heads = m.allocate_cache(2, 32, transpoint=HeadTransPoints((9, 9, 9)))
    c_int = m.allocate_cache(2, 32, transpoint=9)
    assert c_heads.groups is None and c_heads.transpoint == 9
    outs = [(m(u[:, :5], cache=c_heads), m(u[:, :5], cache=c_int))]
    outs += [(m.step(u[:, t], c_heads), m.step(u[:, t], c_int)) for t in range(5, 21)]
    for a, b in outs:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_heads_differ_from_the_layer_wide_transpoints():
    """The per-head result is neither layer-wide choice (the test above cannot pass by ignoring P)."""
    m = make(h=4, g=2)
    u = torch.randn(1, 16, 16)
    y = m(u, transpoint=HeadTransPoints((0, A)))
    for P in (0, A):
        assert not torch.allclose(y, m(u, transpoint=P), atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 10), st.integers(1, 12), st.sampled_from(HG), st.booleans(), st.data())
def test_prefill_then_step_equals_forward_with_heads_crossing_at_different_steps(T, n_steps, hg, rope, data):
    h, g = hg
    m = make(h=h, g=g, rope=rope)
    L = T + n_steps
    u = torch.randn(2, L, 16)
    P = data.draw(head_points(g, L, 2))
    full = m(u, transpoint=P)
    cache = m.allocate_cache(2, data.draw(st.sampled_from([None, L])), transpoint=P)
    outs = [m(u[:, :T], cache=cache)]
    for t in range(T, L):
        outs.append(m.step(u[:, t], cache)[:, None])
        for sub in cache.groups or [cache]:  # a group's K/V freed once every row of it crossed (or
            # is at its P, with the SSM already running for a row of the group: per-row P)
            assert sub.k is None if t >= sub.max_transpoint else (t == sub.max_transpoint - 1 or sub.k is not None)
            assert (sub.ssm_state is None) == (t < sub.min_transpoint)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-8)


def test_chunked_prefill_equals_forward():
    m = make(h=8, g=4)
    u = torch.randn(2, 40, 16)
    P = HeadTransPoints((17, 3, A, 17))  # heads 0 and 3: one group, gathered (not contiguous)
    full = m(u, transpoint=P)
    cache = m.allocate_cache(2, 64, transpoint=P)
    assert [s.heads for s in cache.groups] == [(0, 3), (1,), (2,)]
    outs = [m(u[:, a:b_], cache=cache) for a, b_ in [(0, 2), (2, 12), (12, 21), (21, 40)]]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-8)
    assert m(u[:, :0], cache=cache).shape == (2, 0, 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_match_the_slow_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    h, g = HG[int(torch.randint(len(HG), (1,), generator=gen))]
    b, L = int(torch.randint(1, 3, (1,), generator=gen)), int(torch.randint(5, 30, (1,), generator=gen))
    m = make(h=h, g=g, use_D=True, seed=seed)
    P = torch.randint(0, L + 1, (b, g), generator=gen) if seed == 2 else \
        HeadTransPoints(tuple(torch.randint(0, L + 1, (g,), generator=gen).tolist()))
    u = torch.randn(b, L, 16, generator=gen, requires_grad=True)
    w = torch.randn(b, L, 16, generator=gen)
    (m(u, transpoint=P) * w).sum().backward()
    fast = [u.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    u.grad = None
    m.zero_grad()
    (m.out_proj(heads_ref(m, u, P)) * w).sum().backward()
    slow = [u.grad] + [p.grad for p in m.parameters()]
    for (name, _), a, b_ in zip([("u", None)] + list(m.named_parameters()), fast, slow):
        torch.testing.assert_close(a, b_, atol=1e-9, rtol=1e-7, msg=name)


def test_cache_holds_kv_only_for_heads_before_their_transpoint():
    m = make(h=4, g=2)
    P = HeadTransPoints((6, A))
    cache = m.allocate_cache(1, transpoint=P)
    kept, switched = cache.groups[1], cache.groups[0]
    assert switched.heads == (0,) and kept.heads == (1,)
    sizes = []
    for t in range(12):
        m.step(torch.randn(1, 16), cache)
        sizes.append(cache.nbytes())
        nb = lambda *ts: sum(x.numel() * x.element_size() for x in ts)  # noqa: E731
        assert cache.nbytes() == nb(cache.conv_state) + switched.nbytes() + kept.nbytes()
        if t >= 6:  # head 0 crossed: its K/V/dt freed, its SSM state only; head 1 keeps its K/V
            assert switched.k is None and switched.v is None and switched.dt is None
            assert switched.nbytes() == nb(switched.ssm_state) and switched.ssm_state.shape == (1, 2, 8, 8)
        assert kept.ssm_state is None and kept.k.shape[2] == 1 and kept.dt.shape[2] == 2
    assert kept.k.shape[1] >= 12
    full = m.allocate_cache(1, transpoint=A)  # every head kept: both heads' K/V
    for t in range(12):
        m.step(torch.randn(1, 16), full)
    assert cache.nbytes() < full.nbytes()
    from transmamba.evaluation.speed import cache_nbytes  # the cache MB the speed report prints

    assert cache_nbytes([cache]) == cache.nbytes()


def test_each_group_runs_only_its_own_path(monkeypatch):
    """Kept heads cost only their own attention: attention and the SSM each see only the query heads
    of their group, never all heads masked."""
    calls = []
    attend, ssd = SwitchMixer._attend, switch_module.ssd_chunked

    def spy_attend(self, q, *a, **kw):
        calls.append(("attention", q.shape[2], q.shape[1]))
        return attend(self, q, *a, **kw)

    def spy_ssd(x, *a, **kw):
        calls.append(("ssm", x.shape[2], x.shape[1]))
        return ssd(x, *a, **kw)

    monkeypatch.setattr(SwitchMixer, "_attend", spy_attend)
    monkeypatch.setattr(switch_module, "ssd_chunked", spy_ssd)
    m = make(h=8, g=4)
    u = torch.randn(1, 12, 16)
    m(u, transpoint=HeadTransPoints((0, A, 0, 0)))  # 1 of 4 KV heads kept
    assert sorted(calls) == [("attention", 2, 12), ("ssm", 6, 12)]
    calls.clear()
    m(u, transpoint=HeadTransPoints((5, A, 5, 5)))
    assert sorted(calls) == [("attention", 2, 12), ("attention", 6, 5), ("ssm", 6, 7)]
    calls.clear()
    cache = m.allocate_cache(1, transpoint=HeadTransPoints((0, A, 0, 0)))
    m.step(u[:, 0], cache)
    assert calls == [("attention", 2, 1)]  # the decoding SSM step (ssd_step) runs on the other 6 only
    assert cache.groups[0].ssm_state.shape[1] == 6


@pytest.mark.parametrize("P,match", [
    (HeadTransPoints((1, 2, 3)), "n_kv_heads=2"),
    (torch.tensor([[1, 2, 3], [1, 2, 3]]), r"shape \(2, 2\)"),
    (torch.tensor([[1, 2]]), r"shape \(2, 2\)"),
    (torch.tensor([[1.0, 2.0], [1.0, 2.0]]), "dtype"),
    (torch.tensor([[1, -2], [1, 2]]), ">= 0"),
])
def test_bad_per_head_transpoints_are_refused(P, match):
    m = make(h=4, g=2)
    with pytest.raises(ValueError, match=match):
        m(torch.randn(2, 5, 16), transpoint=P)
    with pytest.raises(ValueError, match=match):
        m.allocate_cache(2, 8, transpoint=P)


@pytest.mark.parametrize("P", [(), (1, -1), (1.5, 2), (True, 1), "12"])
def test_bad_head_transpoints_values_are_refused(P):
    with pytest.raises(ValueError, match="per-head transpoint"):
        HeadTransPoints(P)


def test_cache_refuses_another_per_head_transpoint():
    m = make(h=4, g=2)
    cache = m.allocate_cache(1, transpoint=HeadTransPoints((3, A)))
    u = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="differs from the cache's"):
        m(u, transpoint=HeadTransPoints((3, 4)), cache=cache)
    m(u, transpoint=HeadTransPoints((3, A)), cache=cache)  # the same one is fine


# ------------------------------------------------------------------------------ through the LM
TINY = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, chunk_size=4,
            arch="transmamba", max_seq_len=32)
HEADS = {"name": "head_hybrid", "base": {"name": "per_layer", "P": [2, 9, 14]}, "kept_heads": [[0, 1], [2, 0]],
         "n_kv_heads": 2}


def tiny_lm(**kw):
    from transmamba.models.lm import LM, LMConfig

    torch.manual_seed(0)
    return LM(LMConfig(**{**TINY, **kw})).eval()


def test_lm_forward_takes_per_head_lists_and_the_schedule():
    lm = tiny_lm(schedule=HEADS)
    assert lm.transpoints_for(20) == [[2, A], 9, [A, 14]]
    idx = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        ref = lm(idx, transpoints=[HeadTransPoints((2, A)), 9, HeadTransPoints((A, 14))])[0]
        torch.testing.assert_close(lm(idx)[0], ref, rtol=0, atol=0)
        torch.testing.assert_close(lm(idx, transpoints=[[2, A], 9, [A, 14]])[0], ref, rtol=0, atol=0)
        assert not torch.allclose(ref, lm(idx, transpoints=[2, 9, 14])[0], atol=1e-4)
        torch.testing.assert_close(lm(idx, transpoints=[[5, 5], 9, 14])[0], lm(idx, transpoints=[5, 9, 14])[0],
                                   rtol=0, atol=0)


def test_lm_prefill_step_and_generate_equal_forward():
    lm = tiny_lm(schedule=HEADS)
    idx = torch.randint(0, 64, (2, 18))
    with torch.no_grad():
        full = lm(idx)[0]  # the schedule at 18 tokens
        caches = lm.allocate_caches(2, 18)
        outs = [lm(idx[:, :6], caches=caches)[0]]
        outs += [lm.step(idx[:, t], caches)[:, None] for t in range(6, 18)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=1e-8)
    assert caches[0].groups[0].k is None and caches[0].groups[1].k is not None  # layer 0: head 0 crossed at 2
    out = lm.generate(idx[:, :6], 12, temperature=0)
    with torch.no_grad():  # greedy: each token the argmax of the full forward over what came before
        for t in range(6, 18):
            assert torch.equal(out[:, t], lm(out[:, :t], transpoints=lm.transpoints_for(18))[0][:, -1].argmax(-1))


def test_lm_left_padded_rows_equal_each_row_alone():
    """Padding makes each row's per-head TransPoints a "b g" tensor (shifted by the row's padding)."""
    lm = tiny_lm(schedule=HEADS)
    rows = [torch.randint(0, 64, (6,)), torch.randint(0, 64, (11,))]
    L = 11
    pad = torch.tensor([L - len(r) for r in rows])
    idx = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), r]) for r in rows])
    tps = lm.row_transpoints(L, pad)
    assert tps[0].shape == (2, 2) and tps[0].tolist() == [[2 + 5, A + 5], [2, A]]
    with torch.no_grad():
        logits = lm(idx, pad=pad)[0]
        for r, row in enumerate(rows):
            torch.testing.assert_close(logits[r, int(pad[r]):], lm(row[None])[0][0], rtol=1e-10, atol=1e-10)


def test_saved_config_carries_the_head_level_schedule():
    from transmamba.models.lm import LMConfig

    lm = tiny_lm(schedule=HEADS)
    import json

    back = LMConfig.from_dict(json.loads(json.dumps(lm.cfg.to_dict())))
    assert back.schedule == HEADS
    assert tiny_lm(**{**back.to_dict(), "schedule": back.schedule}).transpoints_for(20) == lm.transpoints_for(20)
