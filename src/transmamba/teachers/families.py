"""Which Hugging Face causal LMs convert exactly: one whitelist-based inspection of the HF config.

    inspect_teacher(config) -> TeacherSpec        or a ValueError naming the model type and the feature

A teacher is accepted only when every attribute of its config is one we either honour exactly in
the Switch student (`transmamba.modules.switch.SwitchConfig`, `transmamba.models.lm.LMConfig`) or
know to be irrelevant to the forward pass (token ids, dropout, init ranges, cache flags). Anything
else -- a model type not listed, mixture-of-experts, MLA, encoder-decoder, cross-attention, ALiBi,
partial rotary, a rope type not listed, an activation not listed, an attribute not listed -- is
refused before any weight is read: a silently wrong student is the worst outcome.

Families (model_type) and what each needs of the student:

    llama      Llama 1/2/3: RoPE default | linear | dynamic | llama3 | yarn; attention_bias (q, k, v, o);
               mlp_bias
    mistral    sliding_window on every layer (attention path only: the SSM path, from P on, sees the
               whole prefix through its state; the window applies only before P)
    qwen2      q/k/v bias (no o bias); sliding layers from layer_types
    qwen3      per-head q/k RMSNorm (the SSM path's C and B are the normed q and k)
    gemma      embeddings * sqrt(d), (1 + w) RMSNorm (folded into w at conversion), GeGLU (gelu tanh)
    gemma2     + pre/post norms around attention and MLP, attention and final-logit soft-capping,
               query scaling query_pre_attn_scalar^-1/2, alternating sliding/global layers
    gemma3_text + per-head q/k (1 + w) RMSNorm, a local RoPE base on sliding layers; its config's
               attn_logit_softcapping is ignored, as transformers' Gemma 3 attention ignores it
    phi3       fused qkv_proj and gate_up_proj (split at conversion)
    olmo2      post-norms only, q/k RMSNorm over the full projection
    smollm3    layers without RoPE (no_rope_layers)

RoPE tables of the scaled types are computed with transformers' own `ROPE_INIT_FUNCTIONS`, so the
inverse frequencies and the cos/sin attention factor are the teacher's to the bit. "dynamic" is
exact at lengths within `max_position_embeddings` (beyond it HF rescales its table per call, the
student keeps the original one); `TeacherSpec.exact_up_to` records that bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "smollm3")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}

# attributes that do not change the eval-mode forward pass of a decoder-only LM
IRRELEVANT = {
    "_name_or_path", "_model_name_or_path", "unk_token_id", "sep_token_id", "cls_token_id", "mask_token_id",
    "architectures", "dtype", "torch_dtype", "transformers_version", "id2label", "label2id",
    "output_attentions", "output_hidden_states", "return_dict", "problem_type", "model_type", "initializer_range",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "resid_pdrop", "embd_pdrop",
    "tokenizer_class", "cache_implementation", "max_position_embeddings", "original_max_position_embeddings",
    "_sliding_window_pattern", "sliding_window_pattern", "use_sliding_window", "max_window_layers",
    "no_rope_layer_interval", "chunk_size_feed_forward", "is_encoder_decoder", "_attn_implementation_autoset",
    "tie_word_embeddings", "rope_theta", "partial_rotary_factor",  # (legacy rope_scaling: transformers
    # folds it into rope_parameters; one left over is refused as unknown)
}
HONOURED = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters"}
FAMILY_KEYS = {
    "llama": {"hidden_act", "attention_bias", "mlp_bias", "pretraining_tp"},
    "mistral": {"hidden_act", "sliding_window"},
    "qwen2": {"hidden_act", "sliding_window", "layer_types"},
    "qwen3": {"hidden_act", "attention_bias", "sliding_window", "layer_types"},
    "gemma": {"hidden_act", "hidden_activation", "attention_bias", "use_bidirectional_attention"},
    "gemma2": {"hidden_activation", "attention_bias", "query_pre_attn_scalar", "sliding_window", "layer_types",
               "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"},
    "gemma3_text": {"hidden_activation", "attention_bias", "query_pre_attn_scalar", "sliding_window", "layer_types",
                    "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"},
    "phi3": {"hidden_act", "sliding_window"},
    "olmo2": {"hidden_act", "attention_bias"},
    "smollm3": {"hidden_act", "attention_bias", "mlp_bias", "sliding_window", "layer_types", "no_rope_layers"},
}
# feature -> config attributes that reveal it (for a clear refusal of any model type)
FEATURES = {
    "mixture-of-experts": ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size",
                           "num_experts_per_tok"),
    "multi-head latent attention (MLA)": ("kv_lora_rank", "q_lora_rank"),
    "cross-attention": ("add_cross_attention", "cross_attention_hidden_size"),
    "ALiBi": ("alibi", "use_alibi", "alibi_bias_max"),
    "quantization": ("quantization_config",),
}


@dataclass
class LayerSpec:
    """What differs between the teacher's layers."""

    rope: bool = True
    rope_theta: float = 10000.0
    rope_inv_freq: list[float] | None = None  # None: theta^(-2j/n)
    rope_attention_factor: float = 1.0
    sliding_window: int | None = None


@dataclass
class TeacherSpec:
    """The architecture facts a converter needs (`teachers.to_switch`). Indexable like the legacy
    `teachers.load.teacher_spec` dict (spec["d_model"])."""

    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab: int
    rms_eps: float
    tie_embeddings: bool
    rope_theta: float
    rope_type: str
    hidden_act: str  # ours: silu | gelu_tanh | gelu
    layers: list[LayerSpec] = field(default_factory=list)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str | None = None  # "head" | "full"
    norm_offset: float = 0.0  # 1.0: (1 + w) RMSNorm (Gemma), folded into w at conversion
    embed_scale: float = 1.0
    pre_norms: bool = True
    post_norms: bool = False
    attn_scale: float | None = None  # None: head_dim^-1/2
    attn_softcap: float | None = None
    final_softcap: float | None = None
    fused: bool = False  # phi3: qkv_proj, gate_up_proj
    exact_up_to: int | None = None  # longest exact sequence (dynamic RoPE), None: any
    max_position_embeddings: int | None = None

    @property
    def attn_implementation(self) -> str | None:
        """HF attention to build the teacher with: eager where soft-capping needs the reference math."""
        return "eager" if self.attn_softcap is not None else None

    def __getitem__(self, key):
        if key == "attention_bias":
            return self.qkv_bias
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)

    def norm_names(self) -> dict[str, str]:
        """Student norm slot -> the HF layer's attribute."""
        if self.model_type in ("gemma2", "gemma3_text"):
            return {"norm1": "input_layernorm", "post_norm1": "post_attention_layernorm",
                    "norm2": "pre_feedforward_layernorm", "post_norm2": "post_feedforward_layernorm"}
        if self.model_type == "olmo2":
            return {"post_norm1": "post_attention_layernorm", "post_norm2": "post_feedforward_layernorm"}
        return {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"}

    def switch_options(self) -> dict:
        """SwitchConfig fields shared by every layer (beyond the defaults)."""
        o = {}
        if self.qkv_bias:
            o["bias"] = True
            o["out_bias"] = self.out_bias
        if self.qk_norm:
            o["qk_norm"] = self.qk_norm
        if self.attn_scale is not None:
            o["attn_scale"] = self.attn_scale
        if self.attn_softcap is not None:
            o["attn_softcap"] = self.attn_softcap
        return o

    def layer_options(self, t: int) -> dict:
        """SwitchConfig fields of teacher layer t that differ from the shared ones."""
        ls, o = self.layers[t], {}
        if not ls.rope:
            o["rope"] = False
        if ls.rope_theta != self.rope_theta:
            o["rope_theta"] = ls.rope_theta
        if ls.rope_inv_freq is not None:
            o["rope_inv_freq"] = list(ls.rope_inv_freq)
        if ls.rope_attention_factor != 1.0:
            o["rope_attention_factor"] = ls.rope_attention_factor
        if ls.sliding_window is not None:
            o["sliding_window"] = ls.sliding_window
        return o


def _refuse(mt, feature, why=""):
    raise ValueError(f"teacher model_type {mt!r}: {feature} is not supported by the exact converter"
                     + (f" ({why})" if why else "") + f"; supported model types: {', '.join(FAMILIES)}")


def _rope_params(config, mt, layer_type=None) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    elif any(isinstance(v, dict) for v in params.values()):
        _refuse(mt, "per-layer-type rope_parameters", f"keys {sorted(params)}")
    return dict(params)


def _layer_rope(config, mt, head_dim, layer_type) -> tuple[float, list[float] | None, float, str]:
    p = _rope_params(config, mt, layer_type)
    rt = p.get("rope_type", p.get("type", "default"))
    if rt not in ROPE_TYPES:
        _refuse(mt, f"rope type {rt!r}", f"supported rope types: {', '.join(ROPE_TYPES)}")
    if float(p.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0)) != 1.0:
        _refuse(mt, "partial rotary embeddings (partial_rotary_factor != 1)")
    theta = float(p.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    if rt == "default":
        return theta, None, 1.0, rt
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fn = ROPE_INIT_FUNCTIONS[rt]
    lt = layer_type if isinstance((getattr(config, "rope_parameters", None) or {}).get(layer_type), dict) else None
    inv_freq, factor = fn(config, None, layer_type=lt) if lt else fn(config, None)
    if inv_freq.numel() != head_dim // 2:
        _refuse(mt, f"rope type {rt!r} with {inv_freq.numel()} frequencies for head_dim {head_dim}")
    return theta, [float(f) for f in inv_freq.float().tolist()], float(factor), rt


def inspect_teacher(config) -> TeacherSpec:
    """The TeacherSpec of an HF causal-LM config, or a ValueError naming the model type and the
    feature the exact converter cannot honour (module docstring). Reads the config only."""
    config = getattr(config, "config", config)  # a model is fine too
    mt = getattr(config, "model_type", None) or "unknown"
    d = config.to_dict()
    for feature, keys in FEATURES.items():
        if any(d.get(k) not in (None, False, 0, [], {}) for k in keys):
            _refuse(mt, feature, f"config has {[k for k in keys if d.get(k) not in (None, False, 0, [], {})]}")
    if d.get("is_encoder_decoder"):
        _refuse(mt, "an encoder-decoder architecture")
    if mt == "gemma3":
        _refuse(mt, "the multimodal Gemma 3 wrapper", "convert its text model: model_type 'gemma3_text'")
    if mt not in FAMILIES:
        _refuse(mt, "this model type")
    known = IRRELEVANT | HONOURED | FAMILY_KEYS[mt]
    unknown = sorted(k for k in d if k not in known and d[k] is not None)
    if unknown:
        _refuse(mt, f"config attribute(s) {unknown}", "not known to be honoured exactly")
    if d.get("chunk_size_feed_forward"):
        _refuse(mt, "chunk_size_feed_forward != 0")
    if d.get("use_bidirectional_attention"):
        _refuse(mt, "bidirectional attention")
    if d.get("pretraining_tp", 1) != 1:
        _refuse(mt, "pretraining_tp != 1")
    act_name = d.get("hidden_activation") or d.get("hidden_act")
    if mt == "gemma":  # HF Gemma reads hidden_act
        act_name = d.get("hidden_act")
    if act_name not in ACTIVATIONS:
        _refuse(mt, f"activation {act_name!r}", f"supported: {sorted(ACTIVATIONS)}")

    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    if n_heads % n_kv:
        _refuse(mt, f"num_attention_heads={n_heads} not divisible by num_key_value_heads={n_kv}")
    if head_dim % 2:
        _refuse(mt, f"odd head_dim={head_dim}")

    layer_types = d.get("layer_types") or ["full_attention"] * n_layers
    if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
        _refuse(mt, f"layer_types {sorted(set(layer_types))}")
    window = d.get("sliding_window")
    no_rope = d.get("no_rope_layers") if mt == "smollm3" else None
    layers, rope_types = [], set()
    for t, lt in enumerate(layer_types):
        theta, inv, fac, rt = _layer_rope(config, mt, head_dim, lt)
        rope_types.add(rt)
        sliding = window if (mt in ("mistral", "phi3") or lt == "sliding_attention") else None
        layers.append(LayerSpec(rope=bool(no_rope[t]) if no_rope is not None else True, rope_theta=theta,
                                rope_inv_freq=inv, rope_attention_factor=fac,
                                sliding_window=int(sliding) if sliding else None))
    gemma = mt in ("gemma", "gemma2", "gemma3_text")
    attn_bias = bool(d.get("attention_bias", False))
    spec = TeacherSpec(
        model_type=mt, n_layers=n_layers, d_model=config.hidden_size, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, d_ff=config.intermediate_size, vocab=config.vocab_size,
        rms_eps=float(config.rms_norm_eps), tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        rope_theta=layers[-1].rope_theta if mt != "gemma3_text" else _layer_rope(config, mt, head_dim, "full_attention")[0],
        rope_type="/".join(sorted(rope_types)), hidden_act=ACTIVATIONS[act_name], layers=layers,
        qkv_bias=attn_bias or mt == "qwen2", out_bias=attn_bias, mlp_bias=bool(d.get("mlp_bias", False)),
        qk_norm={"qwen3": "head", "gemma3_text": "head", "olmo2": "full"}.get(mt),
        norm_offset=1.0 if gemma else 0.0, embed_scale=config.hidden_size ** 0.5 if gemma else 1.0,
        pre_norms=mt != "olmo2", post_norms=mt in ("gemma2", "gemma3_text", "olmo2"),
        attn_scale=float(config.query_pre_attn_scalar) ** -0.5 if mt in ("gemma2", "gemma3_text") else None,
        # transformers' Gemma 3 attention never applies attn_logit_softcapping (Gemma 2's does): the
        # teacher is what its forward computes, so neither does the student
        attn_softcap=d.get("attn_logit_softcapping") if mt == "gemma2" else None,
        final_softcap=d.get("final_logit_softcapping") if mt in ("gemma2", "gemma3_text") else None,
        fused=mt == "phi3", exact_up_to=d.get("max_position_embeddings") if "dynamic" in rope_types else None,
        max_position_embeddings=d.get("max_position_embeddings"))
    return spec


# ------------------------------------------------------------------------------ teacher weights
def _w(mod, offset=0.0):
    return mod.weight + offset if offset else mod.weight


@torch.no_grad()
def layer_weights(teacher, t: int, spec: TeacherSpec) -> dict:
    """Teacher layer t's tensors in one vocabulary, fused projections split and (1 + w) norms folded:
    q, k, v, o (weights "out in"), q_bias, k_bias, v_bias, o_bias, q_norm, k_norm, gate, up, down,
    gate_bias, up_bias, down_bias, and one entry per norm slot of `spec.norm_names()`."""
    layer = teacher.model.layers[t]
    at, mlp = layer.self_attn, layer.mlp
    hq, hk = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    w = {}
    if spec.fused:
        w["q"], w["k"], w["v"] = torch.split(at.qkv_proj.weight, [hq, hk, hk], 0)
        w["gate"], w["up"] = mlp.gate_up_proj.weight.chunk(2, 0)
    else:
        for n in "qkv":
            proj = getattr(at, f"{n}_proj")
            w[n] = proj.weight
            w[f"{n}_bias"] = proj.bias
        w["gate"], w["up"] = mlp.gate_proj.weight, mlp.up_proj.weight
        w["gate_bias"], w["up_bias"] = mlp.gate_proj.bias, mlp.up_proj.bias
    w["o"], w["o_bias"] = at.o_proj.weight, at.o_proj.bias
    w["down"], w["down_bias"] = mlp.down_proj.weight, mlp.down_proj.bias
    if spec.qk_norm:
        w["q_norm"], w["k_norm"] = _w(at.q_norm, spec.norm_offset), _w(at.k_norm, spec.norm_offset)
    for slot, name in spec.norm_names().items():
        w[slot] = _w(getattr(layer, name), spec.norm_offset)
    return w


@torch.no_grad()
def final_norm_weight(teacher, spec: TeacherSpec) -> torch.Tensor:
    return _w(teacher.model.norm, spec.norm_offset)
