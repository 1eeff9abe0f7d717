"""TransPoint schedules: which position P each TransMamba-Switch layer switches at.

A TransMamba-Switch layer runs causal softmax attention on positions t < P and the SSD scan on
positions t >= P (see `transmamba.modules.switch`). A schedule decides P for every layer,
possibly as a function of the sequence length and of the training step, so TransPoints can move
during training and inference.

Every schedule answers `transpoints(n_layers, seq_len, step=None) -> list`, one entry per layer: an
int, or (head-level TransPoints, `head_hybrid`) a list of one int per KV head of that layer, whose
heads do not all agree (`transmamba.modules.head_transpoints`); `step=None` is the evaluation
setting (deterministic). P >= seq_len means "attention only", P = 0 means "SSM only".

Select by name from config or CLI with `make_schedule`:
    "attention" | "ssm" | "staggered" | {"name": "fixed", "P": 128} | {"name": "per_layer", "P": [...]}
    {"name": "depth", "start": 0, "end": 512, "order": "increasing"} | {"name": "fraction", "f": 0.5}
    {"name": "random", "choices": [0, 128, 256], "eval": 128} | {"name": "staggered", "period": 8, "span": 1024}
    {"name": "annealed", "target": "staggered", "steps": 500, "mode": "together" | "layerwise"}
    {"name": "hybrid", "base": {"name": "fixed", "P": 128}, "attention_layers": [3, 17]}
    {"name": "head_hybrid", "base": "staggered", "kept_heads": [[3, 0], [17, 2]], "n_kv_heads": 4}
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ATTENTION_ONLY = 2**31 - 1  # a TransPoint beyond any sequence: the layer never switches


class Schedule:
    """Base class; subclasses implement `transpoints`."""

    name = "base"

    def transpoints(self, n_layers: int, seq_len: int, step: int | None = None) -> list[int]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: v for k, v in self.__dict__.items()}}


@dataclass
class Fixed(Schedule):
    """The same P in every layer."""

    P: int
    name = "fixed"

    def transpoints(self, n_layers, seq_len, step=None):
        return [self.P] * n_layers


@dataclass
class PerLayer(Schedule):
    """An explicit list of TransPoints, repeated cyclically if shorter than the depth."""

    P: list[int]
    name = "per_layer"

    def transpoints(self, n_layers, seq_len, step=None):
        return [self.P[i % len(self.P)] for i in range(n_layers)]


@dataclass
class ByDepth(Schedule):
    """P moves linearly with depth from `start` (first layer) to `end` (last layer)."""

    start: int = 0
    end: int | None = None  # None: the sequence length
    order: str = "increasing"  # "decreasing" swaps start and end
    name = "depth"

    def transpoints(self, n_layers, seq_len, step=None):
        lo, hi = self.start, seq_len if self.end is None else self.end
        if self.order == "decreasing":
            lo, hi = hi, lo
        if n_layers == 1:
            return [lo]
        return [round(lo + (hi - lo) * i / (n_layers - 1)) for i in range(n_layers)]


@dataclass
class Fraction(Schedule):
    """P = round(f * seq_len) in every layer."""

    f: float
    name = "fraction"

    def transpoints(self, n_layers, seq_len, step=None):
        return [round(self.f * seq_len)] * n_layers


@dataclass
class RandomChoice(Schedule):
    """During training each layer draws its P from `choices`, seeded by the step; `eval` at inference."""

    choices: list[int] = field(default_factory=lambda: [0, 128, 256, 384, 512])
    eval: int | None = None  # None: the median choice
    seed: int = 0
    name = "random"

    def transpoints(self, n_layers, seq_len, step=None):
        if step is None:
            p = self.eval if self.eval is not None else sorted(self.choices)[len(self.choices) // 2]
            return [p] * n_layers
        rng = random.Random(self.seed * 1_000_003 + step)
        return [rng.choice(self.choices) for _ in range(n_layers)]


@dataclass
class Attention(Schedule):
    """No SSM: every position uses attention."""

    name = "attention"

    def transpoints(self, n_layers, seq_len, step=None):
        return [ATTENTION_ONLY] * n_layers


@dataclass
class SSM(Schedule):
    """No attention: every position uses the SSM."""

    name = "ssm"

    def transpoints(self, n_layers, seq_len, step=None):
        return [0] * n_layers


@dataclass
class Staggered(Schedule):
    """The paper's best: consecutive layers take P = (i mod period) * span / period.

    With span = the training length T, the TransPoints of `period` consecutive layers are spread
    evenly over [0, T) (Li et al. used steps of 128 over 8 layers), and the pattern repeats with
    depth. P is in absolute tokens, so it stays put when inference runs longer sequences.
    """

    period: int = 8
    span: int | None = None  # None: the sequence length at call time
    name = "staggered"

    def transpoints(self, n_layers, seq_len, step=None):
        span = seq_len if self.span is None else self.span
        return [(i % self.period) * span // self.period for i in range(n_layers)]


@dataclass
class Annealed(Schedule):
    """TransPoint annealing: start as a Transformer (P = seq_len) and move down to `target` over `steps`.

    mode "together": P_i(s) = T_i + (L - T_i) * max(0, 1 - s / steps) for every layer at once.
    mode "layerwise": layer i (counted from the top, `order` "top_down") anneals during its own slot
    [i, i + 1) * steps / n_layers, so layers switch one after another.
    T_i = the target schedule's TransPoint; step None (evaluation) gives the target.
    """

    target: dict | str | int = "staggered"
    steps: int = 1000
    mode: str = "together"
    order: str = "top_down"
    name = "annealed"

    def transpoints(self, n_layers, seq_len, step=None):
        target = make_schedule(self.target).transpoints(n_layers, seq_len, None)
        if step is None:
            return target
        out = []
        for i, t in enumerate(target):
            if self.mode == "together":
                frac = 1 - step / self.steps
            elif self.mode == "layerwise":
                slot = (n_layers - 1 - i) if self.order == "top_down" else i
                frac = 1 - (step * n_layers / self.steps - slot)
            else:
                raise ValueError(f"annealing mode must be 'together' or 'layerwise', got {self.mode!r}")
            frac = min(max(frac, 0.0), 1.0)

            def anneal(t):
                lo = min(t, seq_len)
                return t if frac == 0 else round(lo + (seq_len - lo) * frac)

            out.append(_per_head_or_int([anneal(p) for p in t]) if isinstance(t, list) else anneal(t))
        return out


@dataclass
class Hybrid(Schedule):
    """A layer-wise hybrid: the layers in `attention_layers` never switch (attention at every
    position, a KV cache that grows with the context); every other layer follows `base`.
    `transmamba.adapt.attention_layers` chooses the layers by what switching each one costs."""

    base: dict | str | int = "staggered"
    attention_layers: list[int] = field(default_factory=list)
    name = "hybrid"

    def __post_init__(self):
        make_schedule(self.base)  # fail early on a bad base
        bad = [i for i in self.attention_layers if not isinstance(i, int) or isinstance(i, bool) or i < 0]
        if bad:
            raise ValueError(f"hybrid schedule: attention_layers must be layer indices >= 0, got {bad}")

    def transpoints(self, n_layers, seq_len, step=None):
        out_of_range = [i for i in self.attention_layers if i >= n_layers]
        if out_of_range:
            raise ValueError(f"hybrid schedule: attention_layers {out_of_range} out of range for {n_layers} layers")
        keep = set(self.attention_layers)
        tp = make_schedule(self.base).transpoints(n_layers, seq_len, step)
        return [ATTENTION_ONLY if i in keep else P for i, P in enumerate(tp)]


def _per_head_or_int(P: list[int]) -> int | list[int]:
    """A layer's per-head TransPoints, as one int when every head agrees."""
    return P[0] if len(set(P)) == 1 else P


def _is_index(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and i >= 0


@dataclass
class HeadHybrid(Schedule):
    """A head-level hybrid: the KV heads in `kept_heads` ([layer, kv_head] pairs) never switch
    (attention at every position, with their query heads, and their K/V cache kept); every other
    head follows `base`. A layer with kept heads gets a list of its n_kv_heads TransPoints (one per
    KV head; an int if every head agrees), the others base's int. n_kv_heads: the KV heads per
    layer (an int, or one per layer), needed as soon as a head is kept.
    `transmamba.modules.switch.SwitchMixer` runs each group of heads of equal P on its own."""

    base: dict | str | int = "staggered"
    kept_heads: list = field(default_factory=list)
    n_kv_heads: int | list[int] | None = None
    name = "head_hybrid"

    def __post_init__(self):
        make_schedule(self.base)  # fail early on a bad base
        bad = [x for x in self.kept_heads
               if not isinstance(x, (list, tuple)) or len(x) != 2 or not all(_is_index(i) for i in x)]
        if bad:
            raise ValueError(f"head_hybrid schedule: kept_heads must be [layer, kv_head] pairs of indices >= 0, "
                             f"got {bad}")
        g = self.n_kv_heads
        if g is None and self.kept_heads:
            raise ValueError("head_hybrid schedule: n_kv_heads (the KV heads per layer) is required with kept_heads")
        if g is not None and not (_is_index(g) and g > 0 or isinstance(g, list) and g
                                  and all(_is_index(x) and x > 0 for x in g)):
            raise ValueError(f"head_hybrid schedule: n_kv_heads must be an int > 0 or one per layer, got {g!r}")
        self.kept_heads = [list(x) for x in self.kept_heads]

    def _heads_of(self, layer: int, n_layers: int) -> int:
        g = self.n_kv_heads
        if isinstance(g, list):
            if len(g) != n_layers:
                raise ValueError(f"head_hybrid schedule: n_kv_heads lists {len(g)} layers, the model has {n_layers}")
            return g[layer]
        return g

    def transpoints(self, n_layers, seq_len, step=None):
        out_of_range = [x for x in self.kept_heads if x[0] >= n_layers or x[1] >= self._heads_of(x[0], n_layers)]
        if out_of_range:
            raise ValueError(f"head_hybrid schedule: kept_heads {out_of_range} out of range for {n_layers} layers "
                             f"of n_kv_heads={self.n_kv_heads}")
        tp = list(make_schedule(self.base).transpoints(n_layers, seq_len, step))
        for layer in sorted({x[0] for x in self.kept_heads}):
            g = self._heads_of(layer, n_layers)
            P = list(tp[layer]) if isinstance(tp[layer], list) else [tp[layer]] * g
            for lay, head in self.kept_heads:
                if lay == layer:
                    P[head] = ATTENTION_ONLY
            tp[layer] = _per_head_or_int(P)
        return tp


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls
    for cls in (Fixed, PerLayer, ByDepth, Fraction, RandomChoice, Attention, SSM, Staggered, Annealed, Hybrid,
                HeadHybrid)
}


def make_schedule(spec: str | dict | Schedule | int | None) -> Schedule:
    """Build a schedule from a name, a dict {"name": ..., **params}, an int (fixed P) or a Schedule."""
    if isinstance(spec, Schedule):
        return spec
    if spec is None:
        return Attention()
    if isinstance(spec, int):
        return Fixed(spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"schedule spec must be a name, an int or a dict with 'name', got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        cls = SCHEDULES[spec["name"]]
    except KeyError:
        raise ValueError(f"unknown schedule {spec['name']!r}; choose from {sorted(SCHEDULES)}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for schedule {spec['name']!r}: {e}") from None
