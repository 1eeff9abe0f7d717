"""Decoder-only language model; one code path builds four architectures at equal width and depth.

    tokens -> embedding -> n_layers x [x + mixer(RMSNorm(x));  x + SwiGLU(RMSNorm(x))] -> RMSNorm -> tied head

arch = "transformer":  every mixer is causal self-attention (RoPE, grouped-query heads)
arch = "mamba2":       every mixer is a Mamba-2 (SSD) mixer
arch = "hybrid":       Mamba-2 mixers with one attention layer in `hybrid_attn_every` (the last of each group)
arch = "transmamba":   every mixer is a TransMamba-Switch mixer; each layer's TransPoint comes from
                       the schedule (`transmamba.modules.schedule`), per call
arch = another kind:   every mixer of that registered kind (`transmamba.modules.registry`, which
                       also builds each layer's mixer: `build_mixer`)

Options for converted Transformer families (`transmamba.teachers.families`; defaults: the block above):
    pre_norms / post_norms   RMSNorm before each branch / on each branch's output before the residual
                             add (Gemma 2/3: both; OLMo 2: post only)
    mlp_act, mlp_bias        the gated MLP's activation (silu | gelu_tanh | gelu), biases
    embed_scale              embeddings multiplied by it (Gemma: sqrt(d_model)); the tied head is not
    final_softcap            logits <- cap * tanh(logits / cap)
    switch_options           SwitchConfig fields for every Switch layer (bias, qk_norm, attn_scale, ...)
    switch_layer_options     one dict per layer, overriding those (RoPE on/off, base, table, window)

Parameter counts are equalised across architectures: each layer's SwiGLU width is set so that
mixer + MLP has the parameter count of an attention layer with a `d_ff`-wide SwiGLU.
Decoding: `allocate_caches` then `step` one token at a time (or `generate`).

Left padding (`pad`: padding tokens per row, "b"): every mixer makes padded positions contribute
nothing, and each row's TransPoints are the schedule's for the row alone (its length without the
padding) shifted by its padding, so each row of a padded batch equals the row alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from transmamba.modules import attention, mamba2, switch  # noqa: F401  (the built-in mixer kinds register on import)
from transmamba.modules.mlp import SwiGLU
from transmamba.modules.norm import RMSNorm
from transmamba.modules.registry import mixer_kinds, mixer_spec
from transmamba.ops import validate
from transmamba.ops.padding import check_pad
from transmamba.modules.schedule import make_schedule
from transmamba.modules.head_transpoints import HeadTransPoints, layer_transpoint

ARCHS = ("transformer", "mamba2", "hybrid", "transmamba")
# arch -> the mixer kind of every layer (hybrid: `LMConfig.layer_kind`)
ARCH_KINDS = {"transformer": "attention", "mamba2": "mamba2", "transmamba": "transmamba"}


def arch_names() -> tuple[str, ...]:
    """The valid `LMConfig.arch` values: ARCHS, then every other registered mixer kind
    (`transmamba.modules.registry`), each an arch whose every layer is of that kind."""
    served = set(ARCH_KINDS.values())
    return ARCHS + tuple(k for k in mixer_kinds() if k not in served)


@dataclass
class LMConfig:
    vocab_size: int = 8192
    d_model: int = 384
    n_layers: int = 8
    arch: str = "transmamba"
    n_heads: int = 6
    n_kv_heads: int | None = None
    head_dim: int = 64
    d_ff: int | None = None  # SwiGLU width of an attention layer; None: 8/3 d_model rounded to 64
    balance_params: bool = True  # widen/narrow each layer's MLP to match the attention layer's count
    d_state: int = 64  # Mamba-2
    expand: int = 2  # Mamba-2
    d_conv: int = 4
    chunk_size: int = 64
    hybrid_attn_every: int = 4
    schedule: str | dict | int | None = "staggered"  # TransMamba-Switch TransPoints
    rope_theta: float = 10000.0
    switch_rope: bool = True  # RoPE on the Switch layer's attention path
    conv_activation: str | None = "silu"
    conv_init_identity: bool = False
    switch_gate_bias: bool = False  # a bias on the Switch layer's z gate (converted students open it)
    switch_options: dict = field(default_factory=dict)  # more SwitchConfig fields, every Switch layer
    switch_layer_options: list = field(default_factory=list)  # [] or one dict per layer (overrides)
    pre_norms: bool = True
    post_norms: bool = False
    mlp_act: str = "silu"
    mlp_bias: bool = False
    embed_scale: float = 1.0
    final_softcap: float | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    max_seq_len: int = 2048  # informational: the training length
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in arch_names():
            raise ValueError(f"arch must be one of {arch_names()}, got {self.arch!r}")
        self.check()
        if self.d_ff is None:
            self.d_ff = 64 * round(8 * self.d_model / 3 / 64)
        self._check_schedule()
        if self.switch_layer_options and len(self.switch_layer_options) != self.n_layers:
            raise ValueError(f"switch_layer_options has {len(self.switch_layer_options)} entries, "
                             f"expected n_layers={self.n_layers} (or none)")
        if not (self.pre_norms or self.post_norms):
            raise ValueError("a block needs pre_norms or post_norms")

    # integer fields that size a tensor or divide a length: each must be >= 1
    POSITIVE_INTS = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_state", "expand", "d_conv",
                     "chunk_size", "hybrid_attn_every", "max_seq_len")

    def check(self) -> None:
        """ValueError naming the key (as `model.<key>`, the run config's name) for a value no model
        can be built or run with: a size or period < 1 (`expand: 0` would divide by zero), a
        norm_eps <= 0 or a rope_theta <= 0 (NaN in the kernels), a non-finite or negative init_std,
        a non-finite embed_scale / final_softcap, options of the wrong container type."""
        def bad(key, must_be, value):
            return ValueError(f"config key 'model.{key}' must be {must_be}, got {value!r}")

        def is_int(v):  # an int, or a float with an integral value (YAML reads 1e3 as a float)
            return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())

        def finite(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in self.POSITIVE_INTS:
            v = getattr(self, key)
            if not (is_int(v) and v >= 1):
                raise bad(key, "an integer >= 1", v)
        for key in ("n_kv_heads", "d_ff"):
            v = getattr(self, key)
            if v is not None and not (is_int(v) and v >= 1):
                raise bad(key, "an integer >= 1 or null", v)
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise bad("n_kv_heads", f"a divisor of model.n_heads={self.n_heads}", self.n_kv_heads)
        for key in ("norm_eps", "rope_theta", "embed_scale"):
            v = getattr(self, key)
            if not (finite(v) and v > 0):
                raise bad(key, "a finite number > 0", v)
        if not (finite(self.init_std) and self.init_std >= 0):
            raise bad("init_std", "a finite number >= 0", self.init_std)
        if self.final_softcap is not None and not (finite(self.final_softcap) and self.final_softcap > 0):
            raise bad("final_softcap", "a finite number > 0 or null", self.final_softcap)
        for key in ("balance_params", "switch_rope", "conv_init_identity", "switch_gate_bias", "pre_norms",
                    "post_norms", "mlp_bias", "tie_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false", getattr(self, key))
        for key in ("switch_options", "extra"):
            if not isinstance(getattr(self, key), dict):
                raise bad(key, "a mapping", getattr(self, key))
        if not (isinstance(self.switch_layer_options, list) and all(isinstance(o, dict) for o in self.switch_layer_options)):
            raise bad("switch_layer_options", "a list of mappings (one per layer) or []", self.switch_layer_options)

    def _check_schedule(self) -> None:
        """Build the schedule and ask it for its TransPoints (evaluation, and the first training
        steps) at max_seq_len: a bad spec or a negative / non-integer TransPoint is a ValueError
        naming model.schedule, not a kernel's "transpoint must be >= 0" at the first step."""
        try:
            sched = make_schedule(self.schedule)
            for step in (None, *range(8)):
                for layer, tp in enumerate(sched.transpoints(self.n_layers, int(self.max_seq_len), step)):
                    for p in (tp if hasattr(tp, "__iter__") else [tp]):  # an int, or one P per KV head
                        if isinstance(p, bool) or not isinstance(p, int):
                            raise ValueError(f"it gives TransPoint {p!r} (a {type(p).__name__}) for layer {layer}; "
                                             f"TransPoints are integers >= 0")
                        if p < 0:
                            raise ValueError(f"it gives TransPoint {p} for layer {layer}; TransPoints must be >= 0")
        except (ValueError, TypeError, ZeroDivisionError, KeyError) as e:
            raise ValueError(f"config key 'model.schedule' ({self.schedule!r}) is not a valid schedule: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LMConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)

    def layer_kind(self, i: int) -> str:
        if self.arch == "hybrid":
            return "attention" if i % self.hybrid_attn_every == self.hybrid_attn_every - 1 else "mamba2"
        return ARCH_KINDS.get(self.arch, self.arch)  # another registered kind: every layer of it


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build_mixer(cfg: LMConfig, kind: str, layer: int | None = None) -> nn.Module:
    """The mixer of kind `kind` for layer `layer` (None: not tied to a layer), from the registry."""
    return mixer_spec(kind).build(cfg, layer)


class Block(nn.Module):
    """x + post1(mixer(norm1(x))), then + post2(mlp(norm2(x))); absent norms are the identity."""

    def __init__(self, cfg: LMConfig, kind: str, d_ff: int, layer: int | None = None):
        super().__init__()
        self.kind = kind
        spec = mixer_spec(kind)
        self.takes_transpoint = spec.takes_transpoint
        norm = (lambda: RMSNorm(cfg.d_model, cfg.norm_eps))  # noqa: E731
        self.norm1 = norm() if cfg.pre_norms else nn.Identity()
        self.mixer = spec.build(cfg, layer)
        self.norm2 = norm() if cfg.pre_norms else nn.Identity()
        self.mlp = SwiGLU(cfg.d_model, d_ff, bias=cfg.mlp_bias, act=cfg.mlp_act)
        if cfg.post_norms:
            self.post_norm1, self.post_norm2 = norm(), norm()
        else:
            self.post_norm1 = self.post_norm2 = None

    def _post(self, norm, y):
        return y if norm is None else norm(y)

    def _transpoint_kw(self, transpoint) -> dict:
        """The TransPoint as a keyword for the mixers that take one (TransMamba-Switch)."""
        return {"transpoint": transpoint} if self.takes_transpoint else {}

    def forward(self, x, transpoint=None, cache=None, pad=None):
        kw = self._transpoint_kw(transpoint)
        if pad is not None:
            kw["pad"] = pad
        y = self.mixer(self.norm1(x), cache=cache, **kw)
        x = x + self._post(self.post_norm1, y)
        return x + self._post(self.post_norm2, self.mlp(self.norm2(x)))

    def allocate_cache(self, batch: int, max_len: int | None = None, *, transpoint=None, device=None,
                       dtype=None):
        """The mixer's decoding cache (`allocate_cache` of every mixer has this signature)."""
        return self.mixer.allocate_cache(batch, max_len, device=device, dtype=dtype,
                                         **self._transpoint_kw(transpoint))

    def cache_pad(self, cache, pad) -> None:
        """Record the prompt's left padding in a cache that masks keys (attention, Switch)."""
        if hasattr(cache, "pad"):
            cache.pad = pad

    def step(self, x_t, cache):
        x_t = x_t + self._post(self.post_norm1, self.mixer.step(self.norm1(x_t), cache))
        return x_t + self._post(self.post_norm2, self.mlp(self.norm2(x_t)))


class LM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.schedule = make_schedule(cfg.schedule)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        ref = _n_params(build_mixer(cfg, "attention")) + 3 * cfg.d_model * cfg.d_ff
        blocks = []
        for i in range(cfg.n_layers):
            kind = cfg.layer_kind(i)
            d_ff = cfg.d_ff
            if cfg.balance_params and kind != "attention":
                d_ff = max(16, (ref - _n_params(build_mixer(cfg, kind, i))) // (3 * cfg.d_model))
            blocks.append(Block(cfg, kind, d_ff, i))
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        for name, p in self.named_parameters():  # residual-branch outputs scaled by depth (GPT-2)
            if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = _n_params(self)
        return n - self.embed.weight.numel() if non_embedding else n

    def set_schedule(self, spec, *, persist: bool = True) -> None:
        """Take the TransPoint schedule `spec` (a name, an int P or a spec dict: `make_schedule`)
        from now on. persist: also record it in `cfg`, which a saved model keeps; False for a
        schedule used only while training (an annealed one), so the config keeps its target."""
        schedule = make_schedule(spec)
        if persist:
            self.cfg.schedule = spec
        self.schedule = schedule

    def transpoints_for(self, seq_len: int, step: int | None = None) -> list[int]:
        """Per-layer TransPoints from the schedule (step=None: the evaluation setting): an int per
        layer, or for a layer with head-level TransPoints a list of one int per KV head."""
        return self.schedule.transpoints(self.cfg.n_layers, seq_len, step)

    def _check_idx(self, idx):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be an integer tensor of shape (b, l), got "
                             f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
            raise ValueError(f"idx has token ids outside [0, {self.cfg.vocab_size}): "
                             f"min {int(idx.min())}, max {int(idx.max())}")

    def row_transpoints(self, total_len: int, pad=None, transpoints=None, step: int | None = None) -> list:
        """Per-layer TransPoints for a batch of `total_len` positions: ints without padding; with
        pad "b", one int64 tensor "b" per layer: row r's TransPoint is the one of the row alone
        (length total_len - pad[r], from the schedule, or `transpoints` given as ints) plus pad[r].
        A layer with head-level TransPoints (a list of one int per KV head) gets a `HeadTransPoints`,
        with pad an int64 tensor "b g" (each row's heads shifted by its padding)."""
        if isinstance(transpoints, int):
            transpoints = [transpoints] * self.cfg.n_layers
        if pad is None:
            tps = list(transpoints) if transpoints is not None else self.transpoints_for(total_len, step)
            return [layer_transpoint(P) for P in tps]
        rows = []
        for r in pad.tolist():
            tps = transpoints if transpoints is not None else self.transpoints_for(max(total_len - r, 0), step)
            rows.append([H.shifted(r) if isinstance(H := layer_transpoint(P), HeadTransPoints) else int(P) + r
                         for P in tps])
        return [torch.tensor([row[i] for row in rows], dtype=torch.long, device=pad.device)
                for i in range(self.cfg.n_layers)]

    def forward(self, idx, targets=None, transpoints=None, caches=None, return_hidden: bool = False, pad=None):
        """idx "b l" -> (logits "b l V", loss or None[, hidden states list]).

        transpoints: per-layer list (or one int) for TransMamba-Switch layers, an entry a list of one
        int per KV head for head-level TransPoints; None: the schedule's evaluation setting.
        caches: from `allocate_caches` (prefill; continue with `step`).
        pad: None or "b" left-padding counts: each row then equals the row alone (its TransPoints
        shifted by its padding, see `row_transpoints`; with caches, give pad to `allocate_caches`).
        """
        x, hidden = self.trunk(idx, transpoints, caches, return_hidden, pad)
        logits = self._logits(self.norm_f(x))
        loss = None
        if targets is not None:
            z = logits.flatten(0, 1)
            z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # fp64 stays fp64
            loss = F.cross_entropy(z, targets.flatten(), ignore_index=-100)
        return (logits, loss, hidden) if return_hidden else (logits, loss)

    def trunk(self, idx, transpoints=None, caches=None, return_hidden: bool = False, pad=None):
        """Everything before the final norm and the vocabulary head: idx "b l" -> (x_L "b l d",
        [x_0 = embeddings, x_1, ..., x_L] or None). Arguments as `forward`; `norm_f` then `lm_head`
        (or `transmamba.ops.head_loss.head_ce_kl` on `norm_f(x_L)`) give the logits or losses."""
        self._check_idx(idx)
        L = idx.shape[1]
        pad = check_pad(pad, idx.shape[0])
        if caches is not None:
            if transpoints is None:
                transpoints = [getattr(c, "transpoint", None) for c in caches]
        else:
            transpoints = self.row_transpoints(L, pad, transpoints)
        if isinstance(transpoints, int):
            transpoints = [transpoints] * self.cfg.n_layers
        x = self.embed_tokens(idx)
        hidden = [x] if return_hidden else None
        for i, block in enumerate(self.blocks):
            x = block(x, layer_transpoint(transpoints[i]), None if caches is None else caches[i], pad)
            if return_hidden:
                hidden.append(x)
        return x, hidden

    def blocks_from(self, x, start: int, transpoints: list):
        """x_start "b l d" (the input of block `start`, e.g. `trunk(...)[1][start]`) -> x_L "b l d":
        blocks start..L-1 at the per-layer `transpoints`, no caches, no padding. With `head`, it
        re-runs only the top of the network when the layers below are unchanged."""
        if not 0 <= start <= self.cfg.n_layers:
            raise ValueError(f"blocks_from: start {start} outside [0, {self.cfg.n_layers}]")
        for i in range(start, self.cfg.n_layers):
            x = self.blocks[i](x, layer_transpoint(transpoints[i]), None, None)
        return x

    # ------------------------------------------------------------------------------ decoding
    def allocate_caches(self, batch: int, max_len: int | None = None, transpoints=None, device=None, dtype=None,
                        pad=None):
        """One decoding cache per layer. transpoints: per-layer ints (None: the schedule's for
        max_len tokens). pad: "b" left padding of the prompt that will be prefilled: the TransPoints
        become per-row (`row_transpoints`) and the caches remember it (give it to forward too)."""
        pad = check_pad(pad, batch)
        transpoints = self.row_transpoints(max_len or self.cfg.max_seq_len, pad, transpoints)
        caches = [block.allocate_cache(batch, max_len if pad is None else None, transpoint=P, device=device,
                                       dtype=dtype) for block, P in zip(self.blocks, transpoints)]
        if pad is not None:
            for block, c in zip(self.blocks, caches):
                block.cache_pad(c, pad.to(device) if device is not None else pad)
        return caches

    def step(self, idx_t, caches):
        """One token per row, idx_t "b" -> logits "b V".

        NaN/Inf: the layers' per-tensor checks (`transmamba.ops.validate`) are off inside a step,
        where at batch 1 they are a large share of the work, and the logits are checked once
        instead: a NaN or Inf in any layer's activations or state reaches them, so a blown-up step
        is still a `NumericalError` (its caches are then spoiled). The sign checks (dt > 0, A < 0)
        stay on; `validate.CHECK_FINITE = False` skips the logits check too."""
        check = validate.CHECK_FINITE
        x = self.embed_tokens(idx_t)
        with validate.finite_checks(False):
            for block, cache in zip(self.blocks, caches):
                x = block.step(x, cache)
            logits = self.head(x)
        if check:
            validate.check_finite("decoding step: the logits", logits)
        return logits

    def embed_tokens(self, idx):
        """idx "b l" -> the token embeddings "b l d" (scaled by embed_scale where the family does)."""
        x = self.embed(idx)
        if self.cfg.embed_scale != 1.0:  # in the activations' dtype, as HF Gemma does
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)
        return x

    def head(self, x):
        """x_L "... d" -> logits "... V": the final norm and the vocabulary head (softcapped where the family does)."""
        return self._logits(self.norm_f(x))

    def _logits(self, f):
        logits = self.lm_head(f)
        cap = self.cfg.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    @torch.no_grad()
    def decode(self, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
               transpoints=None):
        """Prefill the prompt once, then one cached `step` per token, yielding each new token "b"
        (temperature 0: greedy; else sampling from softmax(logits / temperature), top-k if given)."""
        self._check_idx(idx)
        caches = self.allocate_caches(idx.shape[0], idx.shape[1] + max_new_tokens, transpoints)
        logits = self(idx, caches=caches)[0][:, -1]
        for i in range(max_new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
                    logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1)[:, 0]
            yield nxt
            if i + 1 < max_new_tokens:
                logits = self.step(nxt, caches)

    def generate(self, idx, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 transpoints=None):
        """The prompt followed by `max_new_tokens` decoded tokens "b (l + new)" (see `decode`)."""
        new = [t[:, None] for t in self.decode(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                               transpoints=transpoints)]
        return torch.cat([idx, *new], 1)
