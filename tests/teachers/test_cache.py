"""Teacher cache built from a tiny random Llama: contents, reload, atomicity, and the top-k KL."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.teachers.cache import (TeacherCache, build_teacher_cache, topk_kl, topk_kl_ref,
                                            window_starts)
from tiny_fixtures import tiny_llama

L, N, K = 16, 10, 8


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=2)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 64, size=1000).astype(np.uint16)


@pytest.fixture(scope="module")
def built(model, ids, tmp_path_factory):
    out = tmp_path_factory.mktemp("tc") / "cache"
    build_teacher_cache(model, ids, out, seq_len=L, n_windows=N, top_k=K, hidden_layers=(0, 1, -1),
                        batch_size=4, progress=False)
    return out


def test_window_starts_do_not_overlap():
    for n, l, w in [(1000, 16, 10), (161, 16, 10), (17, 16, 1), (500, 7, 3)]:
        s = window_starts(n, l, w)
        assert len(s) == w and s[0] == 0 and s[-1] + l + 1 <= n and np.all(np.diff(s) >= l)
    with pytest.raises(ValueError, match="n_windows"):
        window_starts(160, 16, 10)


def test_cache_contents(model, ids, built):
    tokens = np.load(built / "tokens.npy")
    starts = window_starts(len(ids), L, N)
    assert tokens.shape == (N, L + 1) and tokens.dtype == np.int32
    assert np.array_equal(tokens, ids[starts[:, None] + np.arange(L + 1)])
    idx, logp = np.load(built / "topk_idx.npy"), np.load(built / "topk_logp.npy")
    assert idx.shape == logp.shape == (N, L, K) and idx.dtype == np.int32
    x = torch.from_numpy(tokens[:, :-1].astype(np.int64))
    with torch.no_grad():
        o = model(input_ids=x, output_hidden_states=True)
    full = torch.log_softmax(o.logits, -1)
    torch.testing.assert_close(torch.from_numpy(logp), full.topk(K, -1).values, rtol=0, atol=1e-5)
    torch.testing.assert_close(full.gather(-1, torch.from_numpy(idx).long()), torch.from_numpy(logp),
                               rtol=0, atol=1e-5)
    assert np.all(np.diff(logp, axis=-1) <= 0)  # most likely first
    for i in (0, 1, 2):  # -1 was normalized to 2 = n_layers
        h = np.load(built / f"hidden_{i}.npy")
        assert h.shape == (N, L, 32) and h.dtype == np.int16  # the bits of bfloat16 values
        assert torch.equal(torch.from_numpy(h).view(torch.bfloat16), o.hidden_states[i].to(torch.bfloat16))


def test_mmap_reload_and_batches(built):
    tc = TeacherCache(built)
    assert len(tc) == N and tc.seq_len == L and tc.top_k == K and tc.hidden_layers == [0, 1, 2]
    assert isinstance(tc.topk_logp, np.memmap) and isinstance(tc.hidden[1], np.memmap)
    b = tc.batch([3, 7])
    tokens = np.load(built / "tokens.npy")
    assert torch.equal(b["x"], torch.from_numpy(tokens[[3, 7], :-1]).long())
    assert torch.equal(b["y"], torch.from_numpy(tokens[[3, 7], 1:]).long())
    assert torch.equal(b["topk_idx"], torch.from_numpy(np.load(built / "topk_idx.npy")[[3, 7]]).long())
    assert torch.equal(b["topk_logp"], torch.from_numpy(np.load(built / "topk_logp.npy")[[3, 7]]))
    assert torch.equal(b["hidden"][2], torch.from_numpy(np.load(built / "hidden_2.npy")[[3, 7]]).view(torch.bfloat16).float())
    light = tc.batch([3, 7], hidden=False)  # the same windows without reading the hidden states
    assert light["hidden"] == {} and all(torch.equal(light[k], b[k]) for k in ("x", "y", "topk_idx", "topk_logp"))
    seen = torch.cat([bb["x"] for bb in tc.batches(3, seed=1)])
    assert seen.shape == (N, L)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, tokens[:, :-1].tolist()))
    assert sum(1 for _ in tc.batches(3, drop_last=True)) == 3
    with pytest.raises(FileNotFoundError):
        TeacherCache(built.parent / "nope")


def test_rebuild_is_noop_and_settings_are_checked(model, ids, built):
    mtime = (built / "meta.json").stat().st_mtime_ns
    build_teacher_cache(model, ids, built, seq_len=L, n_windows=N, top_k=K, hidden_layers=(0, 1, 2),
                        batch_size=2, progress=False)
    assert (built / "meta.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other settings"):
        build_teacher_cache(model, ids, built, seq_len=L, n_windows=N, top_k=4, progress=False)
    with pytest.raises(ValueError, match="hidden_layers"):
        build_teacher_cache(model, ids, built.parent / "x", seq_len=L, n_windows=N, hidden_layers=(3,))
    with pytest.raises(ValueError, match="top_k"):
        build_teacher_cache(model, ids, built.parent / "x", seq_len=L, n_windows=N, top_k=65)


class _Crashing(torch.nn.Module):
    """Forwards to the teacher, then fails on the second batch."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, 0

    def forward(self, **kw):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("teacher died")
        return self.model(**kw)


def test_interrupted_build_leaves_nothing(model, ids, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="teacher died"):
        build_teacher_cache(_Crashing(model), ids, out, seq_len=L, n_windows=N, top_k=K,
                            hidden_layers=(1,), batch_size=4, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        TeacherCache(out)

    out.mkdir()
    (out / "notes.txt").write_text("not a cache")
    with pytest.raises(FileExistsError, match="no teacher cache"):
        build_teacher_cache(model, ids, out, seq_len=L, n_windows=2, top_k=K, progress=False)
    build_teacher_cache(model, ids, out, seq_len=L, n_windows=2, top_k=K, overwrite=True, progress=False)
    assert len(TeacherCache(out)) == 2 and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_topk_kl_zero_for_teacher_positive_otherwise(model, built):
    b = TeacherCache(built).batch(slice(0, 4))
    with torch.no_grad():
        logits = model(input_ids=b["x"]).logits
    assert topk_kl(logits, b["topk_idx"], b["topk_logp"]).abs() < 1e-6
    assert topk_kl(logits + 3.0, b["topk_idx"], b["topk_logp"], T=2.0).abs() < 1e-6  # shift-invariant
    other = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    assert topk_kl(other, b["topk_idx"], b["topk_logp"]) > 1e-3
    assert topk_kl(other, b["topk_idx"], b["topk_logp"], reduction="none").shape == (4, L)
    with pytest.raises(ValueError, match="topk_logp"):
        topk_kl(logits, b["topk_idx"], b["topk_logp"][:, :, :3])
    with pytest.raises(ValueError, match="topk_idx"):
        topk_kl(logits, b["topk_idx"].float(), b["topk_logp"])
    with pytest.raises(ValueError, match="student_logits"):
        topk_kl(logits[0], b["topk_idx"], b["topk_logp"])


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), l=st.integers(1, 4), v=st.integers(2, 12), data=st.data(),
       T=st.sampled_from([0.5, 1.0, 2.0]), seed=st.integers(0, 2**16))
def test_topk_kl_matches_ref_values_and_grads(b, l, v, data, T, seed):
    k = data.draw(st.integers(1, v))
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, l, v, generator=g, dtype=torch.float64) * 2
    logp, idx = torch.log_softmax(teacher, -1).topk(k, -1)
    s1 = torch.randn(b, l, v, generator=g, dtype=torch.float64, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    out, ref = topk_kl(s1, idx, logp, T=T), topk_kl_ref(s2, idx, logp, T=T)
    torch.testing.assert_close(out, ref)
    assert out >= -1e-12
    out.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    mask = torch.ones(b, l, v, dtype=torch.bool).scatter(-1, idx, False)
    assert torch.all(s1.grad[mask] == 0)  # only the teacher's top-k receive gradient


class _Scaled(torch.nn.Module):
    """The teacher with its residual stream scaled by `scale` (hidden states past float16's range) or NaN."""

    def __init__(self, model, scale):
        super().__init__()
        self.model, self.config, self.scale = model, model.config, scale

    def forward(self, **kw):
        o = self.model(**kw)
        o.hidden_states = tuple(h * self.scale for h in o.hidden_states)
        return o


def test_hidden_states_beyond_float16_are_cached_finite(model, ids, tmp_path):
    """A residual stream of ~1e5 (real teachers reach it; float16 stops at 65504) stays finite, and
    the token cosine taken on it is finite."""
    from transmamba.adapt.distill import token_cosine

    out = build_teacher_cache(_Scaled(model, 1e5), ids, tmp_path / "big", seq_len=L, n_windows=N, top_k=K,
                              hidden_layers=(1, 2), progress=False)
    h = TeacherCache(out).batch(slice(0, N))["hidden"]
    assert all(bool(torch.isfinite(v).all()) for v in h.values()) and float(h[2].abs().max()) > 65504
    assert bool(torch.isfinite(token_cosine(h[2], h[1])).all())
    out32 = build_teacher_cache(_Scaled(model, 1e5), ids, tmp_path / "f32", seq_len=L, n_windows=N, top_k=K,
                                hidden_layers=(2,), hidden_dtype="float32", progress=False)
    torch.testing.assert_close(TeacherCache(out32).batch(slice(0, N))["hidden"][2], h[2], rtol=1e-2, atol=0)
    with pytest.raises(ValueError, match="hidden_dtype must be one of.*float16 overflows"):
        build_teacher_cache(model, ids, tmp_path / "f16", seq_len=L, n_windows=N, hidden_dtype="float16")


def test_non_finite_teacher_outputs_are_refused_naming_the_layer(model, ids, tmp_path):
    with pytest.raises(FloatingPointError, match=r"hidden_states\[1\] is not finite.*windows 0..3.*nothing is cached"):
        build_teacher_cache(_Scaled(model, float("nan")), ids, tmp_path / "nan", seq_len=L, n_windows=N, top_k=K,
                            hidden_layers=(1,), batch_size=4, progress=False)
    assert not (tmp_path / "nan").exists()
