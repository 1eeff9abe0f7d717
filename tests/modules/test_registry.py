"""transmamba.modules.registry: a mixer kind registered in one place (here: a toy mixer defined in
this file) is an LM arch that builds, runs forward, decodes (prefill + step == forward) and reports
its cache size, with no other file touched; unknown and doubly registered kinds are refused."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from transmamba.evaluation.speed import cache_nbytes, decode_speed, fill_caches
from transmamba.models.lm import ARCHS, LM, LMConfig, arch_names, build_mixer
from transmamba.modules.attention import CausalSelfAttention
from transmamba.modules.mamba2 import Mamba2
from transmamba.modules.registry import mixer_kinds, mixer_spec, register_mixer, unregister_mixer
from transmamba.modules.switch import SwitchMixer

D_MODEL, N_LAYERS, VOCAB = 16, 3, 31


@dataclass
class ToyCache:
    state: torch.Tensor  # "b d"
    seqlen: int = 0


class ToyMixer(nn.Module):
    """A leaky running sum: h_t = decay h_{t-1} + in_proj(x_t), y_t = out_proj(h_t)."""

    cache_cls = ToyCache

    def __init__(self, d_model: int, decay: float):
        super().__init__()
        self.decay = decay
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    @classmethod
    def from_lm_config(cls, cfg, layer=None):
        return cls(cfg.d_model, decay=0.5 if layer is None else 0.9 - 0.1 * layer)

    def forward(self, x, cache=None, pad=None):
        assert pad is None
        u = self.in_proj(x)
        h = cache.state if cache is not None else u.new_zeros(u.shape[0], u.shape[2])
        ys = []
        for t in range(u.shape[1]):
            h = self.decay * h + u[:, t]
            ys.append(h)
        if cache is not None:
            cache.state, cache.seqlen = h, cache.seqlen + u.shape[1]
        return self.out_proj(torch.stack(ys, 1))

    def step(self, x_t, cache):
        return self.forward(x_t[:, None], cache)[:, 0]

    def allocate_cache(self, batch, max_len=None, *, device=None, dtype=None):
        w = self.in_proj.weight
        return ToyCache(torch.zeros(batch, w.shape[0], device=device or w.device, dtype=dtype or w.dtype))

    def fill_cache(self, cache, context, batch=1):
        cache.state, cache.seqlen = torch.randn(batch, cache.state.shape[1]), context


@pytest.fixture
def toy():
    """The kind "toy" registered for one test (and removed after it, passed or not)."""
    register_mixer("toy")(ToyMixer)
    yield "toy"
    unregister_mixer("toy")


def _lm(arch):
    torch.manual_seed(0)
    return LM(LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=2, head_dim=8,
                       arch=arch)).double().eval()


def test_the_built_in_kinds_are_registered_and_the_arch_names_unchanged():
    assert {"attention", "mamba2", "transmamba"} <= set(mixer_kinds())
    assert mixer_spec("attention").cls is CausalSelfAttention and mixer_spec("mamba2").cls is Mamba2
    assert mixer_spec("transmamba").cls is SwitchMixer and mixer_spec("transmamba").takes_transpoint
    assert arch_names() == ARCHS  # "attention" is served by "transformer", not an arch of its own
    with pytest.raises(ValueError, match="'attention'"):
        LMConfig(arch="attention")


def test_a_registered_toy_kind_builds_runs_decodes_and_reports_its_cache(toy):
    assert "toy" in arch_names()
    m = _lm("toy")
    assert [b.kind for b in m.blocks] == ["toy"] * N_LAYERS
    assert [b.mixer.decay for b in m.blocks] == pytest.approx([0.9, 0.8, 0.7])  # built per layer
    assert all(b.mlp.gate_proj.out_features != m.cfg.d_ff for b in m.blocks)  # MLPs balanced as for any kind
    idx = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full = m(idx)[0]
        caches = m.allocate_caches(2, 9)
        pre = m(idx[:, :5], caches=caches)[0]
        steps = [m.step(idx[:, t], caches) for t in range(5, 9)]
    assert full.shape == (2, 9, VOCAB) and torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat([pre, torch.stack(steps, 1)], 1), full)
    assert [c.seqlen for c in caches] == [9] * N_LAYERS
    assert cache_nbytes(caches) == N_LAYERS * 2 * D_MODEL * 8  # one float64 state "b d" per layer
    ms, mib = decode_speed(m.float(), 6, 2, warmup=0)
    assert ms > 0 and mib == N_LAYERS * 1 * D_MODEL * 4 / 2**20
    fake = m.allocate_caches(1, 8)
    fill_caches(m, fake, 7)
    assert [c.seqlen for c in fake] == [7] * N_LAYERS and cache_nbytes(fake) == N_LAYERS * D_MODEL * 4


def test_a_kind_without_fill_cache_is_refused_by_fill_caches_by_name():
    class NoFill(ToyMixer):
        fill_cache = None

    register_mixer("toy_nofill")(NoFill)
    try:
        m = _lm("toy_nofill")
        with pytest.raises(TypeError, match="'toy_nofill'.*synthetic=False"):
            fill_caches(m, m.allocate_caches(1, 4), 3)
    finally:
        unregister_mixer("toy_nofill")


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown mixer kind 'nope'.*attention"):
        mixer_spec("nope")
    with pytest.raises(ValueError, match="unknown mixer kind 'nope'"):
        build_mixer(LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=2, head_dim=8), "nope")
    with pytest.raises(ValueError, match="arch must be one of .*'nope'"):
        LMConfig(arch="nope")
    with pytest.raises(ValueError, match="unknown mixer kind 'nope'"):
        unregister_mixer("nope")


def test_double_registration_and_incomplete_mixers_are_refused(toy):
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_mixer("toy")(ToyMixer)
    with pytest.raises(ValueError, match="'mamba2' is already registered"):
        register_mixer("mamba2")(ToyMixer)

    class NoStep(nn.Module):
        from_lm_config = ToyMixer.from_lm_config
        allocate_cache = ToyMixer.allocate_cache

    with pytest.raises(TypeError, match=r"'nostep'.*\['forward', 'step'\]"):
        register_mixer("nostep")(NoStep)
    with pytest.raises(ValueError, match="non-empty string"):
        register_mixer("")
    assert "nostep" not in mixer_kinds() and mixer_spec("toy").cls is ToyMixer


def test_an_unregistered_kind_is_no_longer_an_arch():
    register_mixer("toy_gone")(ToyMixer)
    assert LMConfig(arch="toy_gone").layer_kind(0) == "toy_gone"
    unregister_mixer("toy_gone")
    with pytest.raises(ValueError, match="'toy_gone'"):
        LMConfig(arch="toy_gone")
