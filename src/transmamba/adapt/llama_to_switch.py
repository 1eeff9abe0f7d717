"""A Llama-family causal LM -> a TransMamba-Switch LM: the Adapt recipe (subcloning + layered init) on an LM.

Teacher layer t (HF Llama):  x += o_proj(attn(rope(q_proj h), rope(k_proj h), v_proj h)),  h = norm(x)
                             x += down_proj(silu(gate_proj h') * up_proj h'),             h' = norm(x)
Student layer i (TransMamba-Switch, `transmamba.models.lm` arch "transmamba"): the same block shape,
its mixer's Q, K, V (= the SSM's C, B, x) rows of `in_proj` and its `out_proj` are cut from the
teacher's q/k/v/o projections; z (the SSM gate), dt and A_log keep their own init (the teacher has none).
With an identity short conv, no conv activation and RoPE on the attention path, every student
layer's attention path IS the teacher layer: a full-size conversion with every TransPoint beyond the
sequence reproduces the teacher's logits; lowering TransPoints then moves it towards Mamba.

Subcloning (`plan_subclone`) keeps, by importance on a calibration batch of real text:
  residual dims  S   one ranking for all layers: I_j = mean_{tokens, layers} |x_j| (residual stream)
  kv heads / q heads per layer: I_head = mean |attention output of the head| (o_proj's input);
                 kv groups are ranked by the sum over their q heads, then the best q heads inside each
                 kept group (so grouped-query structure survives)
  MLP neurons    per layer: I_k = mean |silu(gate_k) * up_k| (down_proj's input)
Norm gains are rescaled by s = mean rms_S(x) / rms_D(x) over the norm's calibration inputs.
Layered init copies teacher layer `layer_map[i]` into student layer i for the first `n_init` layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from transmamba.adapt.subclone import activation_importance, cut_linear, cut_norm, head_dims, norm_cut_scale, top_k_indices
from transmamba.models.lm import LM, LMConfig


def switch_config_from_teacher(spec: dict, *, n_layers: int | None = None, d_model: int | None = None,
                               n_heads: int | None = None, n_kv_heads: int | None = None,
                               d_ff: int | None = None, **overrides) -> LMConfig:
    """An LMConfig for a Switch student of the teacher (`models.hf_llama.teacher_spec`), cut as asked.

    Defaults give the full-size, lossless student: identity conv without activation, RoPE with the
    teacher's theta, the teacher's eps, vocabulary and tying, no parameter balancing.
    """
    kw = dict(vocab_size=spec["vocab"], d_model=d_model or spec["d_model"], n_layers=n_layers or spec["n_layers"],
              arch="transmamba", n_heads=n_heads or spec["n_heads"], n_kv_heads=n_kv_heads or spec["n_kv_heads"],
              head_dim=spec["head_dim"], d_ff=d_ff or spec["d_ff"], balance_params=False,
              rope_theta=spec["rope_theta"], switch_rope=True, conv_activation=None, conv_init_identity=True,
              norm_eps=spec["rms_eps"], tie_embeddings=spec["tie_embeddings"], schedule="attention")
    kw.update(overrides)
    return LMConfig(**kw)


def layer_map_for(n_student: int, n_teacher: int, how: str = "uniform") -> list[int]:
    """Which teacher layer initialises each student layer: "first" (0..n-1) or "uniform" (spread, ends kept)."""
    if how == "first":
        return list(range(n_student))
    if how == "uniform":
        if n_student == 1:
            return [n_teacher - 1]
        return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]
    raise ValueError(f"layer map must be 'first' or 'uniform', got {how!r}")


@dataclass
class Calibration:
    """Activation statistics of the teacher on a calibration batch (what `plan_subclone` ranks by)."""

    residual: torch.Tensor  # "d": mean |x_j| over tokens and layers
    head_out: list[torch.Tensor]  # per layer "h": mean |attention output of head|
    neurons: list[torch.Tensor]  # per layer "f": mean |silu(gate) * up|
    norm_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # norm name -> "tokens d" sample


@torch.no_grad()
def calibrate(teacher, ids: torch.Tensor, max_norm_tokens: int = 2048) -> Calibration:
    """Run the teacher on `ids` "b l" with hooks on o_proj/down_proj inputs and on every RMSNorm."""
    spec_layers = teacher.model.layers
    hd = teacher.config.head_dim if getattr(teacher.config, "head_dim", None) else (
        teacher.config.hidden_size // teacher.config.num_attention_heads)
    head_out, neurons, norm_in, hooks = {}, {}, {}, []

    def keep(store, key, reduce):
        return lambda mod, args: store.__setitem__(key, reduce(args[0]))

    for t, layer in enumerate(spec_layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            keep(head_out, t, lambda a: a.abs().unflatten(-1, (-1, hd)).mean((0, 1, 3)))))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            keep(neurons, t, lambda a: activation_importance(a))))
        for name in ("input_layernorm", "post_attention_layernorm"):
            hooks.append(getattr(layer, name).register_forward_pre_hook(
                keep(norm_in, f"{t}.{name}", lambda a: a.reshape(-1, a.shape[-1])[:max_norm_tokens].clone())))
    hooks.append(teacher.model.norm.register_forward_pre_hook(
        keep(norm_in, "norm", lambda a: a.reshape(-1, a.shape[-1])[:max_norm_tokens].clone())))
    try:
        out = teacher(ids, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    residual = torch.stack([activation_importance(h) for h in out.hidden_states[:-1]]).mean(0)
    n = len(spec_layers)
    return Calibration(residual, [head_out[t] for t in range(n)], [neurons[t] for t in range(n)], norm_in)


@dataclass
class SubclonePlan:
    dims: torch.Tensor  # kept residual dims "d_s"
    q_heads: list[torch.Tensor]  # per teacher layer: kept q heads, grouped by kept kv head
    kv_heads: list[torch.Tensor]
    neurons: list[torch.Tensor]


def _pick_heads(head_imp: torch.Tensor, n_kv: int, n_kv_s: int, n_q_s: int):
    r, r_s = head_imp.numel() // n_kv, n_q_s // n_kv_s
    groups = head_imp.view(n_kv, r)
    kv = top_k_indices(groups.sum(1), n_kv_s)
    q = torch.cat([kv_i * r + top_k_indices(groups[kv_i], r_s) for kv_i in kv.tolist()])
    return q, kv


def plan_subclone(cal: Calibration, spec: dict, cfg: LMConfig) -> SubclonePlan:
    """Importance-ranked dims, heads and neurons for a student of config `cfg`."""
    if cfg.head_dim != spec["head_dim"]:
        raise ValueError(f"student head_dim={cfg.head_dim} must equal the teacher's {spec['head_dim']} (RoPE pairs)")
    if cfg.n_heads % cfg.n_kv_heads or cfg.n_heads // cfg.n_kv_heads > spec["n_heads"] // spec["n_kv_heads"]:
        raise ValueError(f"student heads {cfg.n_heads}/{cfg.n_kv_heads} do not fit the teacher's "
                         f"{spec['n_heads']}/{spec['n_kv_heads']} grouping")
    for name, s, t in (("d_model", cfg.d_model, spec["d_model"]), ("n_kv_heads", cfg.n_kv_heads, spec["n_kv_heads"]),
                       ("d_ff", cfg.d_ff, spec["d_ff"])):
        if s > t:
            raise ValueError(f"student {name}={s} is larger than the teacher's {t}")
    heads = [_pick_heads(h, spec["n_kv_heads"], cfg.n_kv_heads, cfg.n_heads) for h in cal.head_out]
    return SubclonePlan(dims=top_k_indices(cal.residual, cfg.d_model), q_heads=[q for q, _ in heads],
                        kv_heads=[kv for _, kv in heads], neurons=[top_k_indices(n, cfg.d_ff) for n in cal.neurons])


def full_plan(spec: dict) -> SubclonePlan:
    """Keep everything (the lossless, full-size conversion)."""
    n = spec["n_layers"]
    return SubclonePlan(torch.arange(spec["d_model"]), [torch.arange(spec["n_heads"])] * n,
                        [torch.arange(spec["n_kv_heads"])] * n, [torch.arange(spec["d_ff"])] * n)


@torch.no_grad()
def init_from_teacher(student: LM, teacher, plan: SubclonePlan, *, n_init: int | None = None,
                      layer_map: list[int] | None = None, cal: Calibration | None = None) -> list[str]:
    """Subclone the teacher into the student: embeddings, final norm, and the first `n_init` layers
    (layered init) from teacher layers `layer_map`. Returns the names of the student tensors written."""
    cfg, tm = student.cfg, teacher.model
    n_init = cfg.n_layers if n_init is None else n_init
    layer_map = layer_map or layer_map_for(cfg.n_layers, len(tm.layers))
    S, hd, written = plan.dims, cfg.head_dim, []

    def scale(key):
        return 1.0 if cal is None or S.numel() == cal.residual.numel() else norm_cut_scale(cal.norm_inputs[key], S, "rms")

    def put(name, param, value):
        param.copy_(value.to(param.dtype))
        written.append(name)

    put("embed.weight", student.embed.weight, tm.embed_tokens.weight[:, S])
    put("norm_f.weight", student.norm_f.weight, cut_norm(tm.norm.weight, None, S, scale("norm"))[0])
    if not cfg.tie_embeddings:
        put("lm_head.weight", student.lm_head.weight, teacher.lm_head.weight[:, S])
    for i in range(n_init):
        t = layer_map[i]
        tl, blk = tm.layers[t], student.blocks[i]
        mix, at = blk.mixer, tl.self_attn
        qd, kvd = head_dims(plan.q_heads[t], hd), head_dims(plan.kv_heads[t], hd)
        put(f"blocks.{i}.norm1.weight", blk.norm1.weight, cut_norm(tl.input_layernorm.weight, None, S, scale(f"{t}.input_layernorm"))[0])
        put(f"blocks.{i}.norm2.weight", blk.norm2.weight,
            cut_norm(tl.post_attention_layernorm.weight, None, S, scale(f"{t}.post_attention_layernorm"))[0])
        hp, hq, gk = mix.h * mix.p, mix.h * mix.n, mix.g * mix.n  # in_proj rows: [z | q | k | v | dt]
        W = mix.in_proj.weight
        put(f"blocks.{i}.mixer.in_proj[q]", W[hp:hp + hq], cut_linear(at.q_proj.weight, None, qd, S)[0])
        put(f"blocks.{i}.mixer.in_proj[k]", W[hp + hq:hp + hq + gk], cut_linear(at.k_proj.weight, None, kvd, S)[0])
        put(f"blocks.{i}.mixer.in_proj[v]", W[hp + hq + gk:hp + hq + 2 * gk], cut_linear(at.v_proj.weight, None, kvd, S)[0])
        put(f"blocks.{i}.mixer.out_proj.weight", mix.out_proj.weight, cut_linear(at.o_proj.weight, None, S, qd)[0])
        N = plan.neurons[t]
        put(f"blocks.{i}.mlp.gate_proj.weight", blk.mlp.gate_proj.weight, cut_linear(tl.mlp.gate_proj.weight, None, N, S)[0])
        put(f"blocks.{i}.mlp.up_proj.weight", blk.mlp.up_proj.weight, cut_linear(tl.mlp.up_proj.weight, None, N, S)[0])
        put(f"blocks.{i}.mlp.down_proj.weight", blk.mlp.down_proj.weight, cut_linear(tl.mlp.down_proj.weight, None, S, N)[0])
    return written
