"""The mixer registry: the sequence mixers an LM layer can hold, by kind name.

A mixer kind is registered once, by the module that defines the mixer (its class decorated):

    @register_mixer("mamba2")
    class Mamba2(nn.Module):
        @classmethod
        def from_lm_config(cls, cfg, layer=None) -> "Mamba2": ...

A registered class provides the interface every LM layer (`transmamba.models.lm.Block`) uses:

    from_lm_config(cfg, layer)    the mixer of layer `layer` of an `LMConfig`-like cfg (layer None:
                                  a throwaway one, e.g. for the parameter balancing)
    forward(x, cache=None, pad=None)               "b l d" -> "b l d" (prefill when given a cache)
    step(x_t, cache)                               "b d" -> "b d", one decoding step
    allocate_cache(batch, max_len=None, *, device=None, dtype=None)   its decoding cache (a
                                  dataclass of tensors, so `evaluation.speed.cache_nbytes` sizes it)
    fill_cache(cache, context, batch), cache_cls   optional: the cache (of class cache_cls) made
                                  to look as after `context` tokens, random contents
                                  (`evaluation.speed.fill_caches`: synthetic caches for benchmarks)

With `takes_transpoint=True` (the TransMamba-Switch mixer) forward and allocate_cache also take
the layer's TransPoint (`transpoint=`). Every registered kind is also an `LMConfig.arch` of its own
(every layer of that kind) unless a named arch already serves it (`transmamba.models.lm.ARCHS`).
A new mixer is thus its ops file, its module file and its registration; the modules that define the
built-in kinds are imported by `transmamba.models.lm`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

INTERFACE = ("from_lm_config", "forward", "step", "allocate_cache")  # what a mixer class must define


@dataclass(frozen=True)
class MixerSpec:
    """One registered mixer kind: its class and whether it takes the layer's TransPoint."""

    kind: str
    cls: type
    takes_transpoint: bool = False

    def build(self, cfg, layer: int | None = None) -> nn.Module:
        """The mixer of layer `layer` of `cfg` (None: one not tied to a layer)."""
        return self.cls.from_lm_config(cfg, layer)


_MIXERS: dict[str, MixerSpec] = {}


def register_mixer(kind: str, *, takes_transpoint: bool = False):
    """Class decorator: register the mixer class as `kind`. A kind registered twice, a name that is
    not a non-empty string, or a class missing part of the interface (`INTERFACE`) is refused."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"a mixer kind must be a non-empty string, got {kind!r}")

    def register(cls: type) -> type:
        if kind in _MIXERS:
            raise ValueError(f"mixer kind {kind!r} is already registered (by {_MIXERS[kind].cls.__qualname__})")
        missing = [name for name in INTERFACE if not callable(getattr(cls, name, None))
                   or getattr(cls, name) is getattr(nn.Module, name, None)]  # nn.Module's forward raises
        if missing:
            raise TypeError(f"mixer kind {kind!r}: {getattr(cls, '__qualname__', cls)!r} lacks {missing} "
                            f"(a mixer defines {list(INTERFACE)})")
        _MIXERS[kind] = MixerSpec(kind, cls, takes_transpoint)
        return cls

    return register


def unregister_mixer(kind: str) -> None:
    """Remove a registered kind (e.g. a test's toy mixer); an unknown kind is a ValueError."""
    mixer_spec(kind)
    del _MIXERS[kind]


def mixer_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_MIXERS)


def mixer_spec(kind: str) -> MixerSpec:
    """The registration of `kind`; an unknown kind is a ValueError naming it and the known ones."""
    spec = _MIXERS.get(kind)
    if spec is None:
        raise ValueError(f"unknown mixer kind {kind!r}; registered kinds: {sorted(_MIXERS)}")
    return spec
