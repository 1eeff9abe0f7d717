"""A Transformer causal LM -> a TransMamba-Switch LM: the Adapt recipe (subcloning + layered init) on an LM.

Every family `transmamba.teachers.families` accepts goes through here (its `TeacherSpec` says what
the student needs: biases, q/k norms, norm placement, activation, RoPE tables, windows, soft-caps);
the Llama layer below is the common case.

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

from transmamba.teachers.families import TeacherSpec, final_norm_weight, inspect_teacher, layer_weights
from transmamba.adapt.subclone import activation_importance, cut_linear, cut_norm, head_dims, norm_cut_scale, top_k_indices
from transmamba.models.lm import LM, LMConfig


def switch_config_from_teacher(spec, *, n_layers: int | None = None, d_model: int | None = None,
                               n_heads: int | None = None, n_kv_heads: int | None = None,
                               d_ff: int | None = None, layer_map: list[int] | str | None = None,
                               **overrides) -> LMConfig:
    """An LMConfig for a Switch student of the teacher, cut as asked. `spec`: the `TeacherSpec` of
    `teachers.families.inspect_teacher` (the only form that carries every family option: a plain
    dict, as `teachers.load.teacher_spec` gives, is refused).

    Defaults give the full-size, lossless student: identity conv without activation, RoPE with the
    teacher's theta, the teacher's eps, vocabulary and tying, no parameter balancing, and every
    family option of the TeacherSpec; student layer i takes teacher layer layer_map[i]'s per-layer
    options (RoPE on/off, base, table, window). layer_map: a list, "uniform"/"first", or None
    (uniform).
    """
    if not isinstance(spec, TeacherSpec):
        raise TypeError(f"switch_config_from_teacher needs the TeacherSpec of teachers.families.inspect_teacher("
                        f"config), got a {type(spec).__name__}: a plain dict lacks the RoPE tables, biases, norms "
                        f"and windows of most families and gave silently wrong students")
    n_layers = n_layers or spec["n_layers"]
    kw = dict(vocab_size=spec["vocab"], d_model=d_model or spec["d_model"], n_layers=n_layers,
              arch="transmamba", n_heads=n_heads or spec["n_heads"], n_kv_heads=n_kv_heads or spec["n_kv_heads"],
              head_dim=spec["head_dim"], d_ff=d_ff or spec["d_ff"], balance_params=False,
              rope_theta=spec["rope_theta"], switch_rope=True, conv_activation=None, conv_init_identity=True,
              norm_eps=spec["rms_eps"], tie_embeddings=spec["tie_embeddings"], schedule="attention")
    if not isinstance(layer_map, list):
        layer_map = layer_map_for(n_layers, spec.n_layers, layer_map or "uniform")
    per_layer = [spec.layer_options(t) for t in layer_map]
    kw.update(switch_options=spec.switch_options(), switch_layer_options=per_layer if any(per_layer) else [],
              pre_norms=spec.pre_norms, post_norms=spec.post_norms, mlp_act=spec.hidden_act,
              mlp_bias=spec.mlp_bias, embed_scale=spec.embed_scale, final_softcap=spec.final_softcap)
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
def calibrate(teacher, ids: torch.Tensor, max_norm_tokens: int = 2048, spec: TeacherSpec | None = None) -> Calibration:
    """Run the teacher on `ids` "b l" with hooks on o_proj/down_proj inputs and on every RMSNorm."""
    spec = spec or inspect_teacher(teacher.config)
    spec_layers = teacher.model.layers
    hd = spec.head_dim
    head_out, neurons, norm_in, hooks = {}, {}, {}, []

    def keep(store, key, reduce):
        return lambda mod, args: store.__setitem__(key, reduce(args[0]))

    for t, layer in enumerate(spec_layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            keep(head_out, t, lambda a: a.abs().unflatten(-1, (-1, hd)).mean((0, 1, 3)))))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            keep(neurons, t, lambda a: activation_importance(a))))
        for name in spec.norm_names().values():
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


def check_student_fits(spec, cfg: LMConfig) -> None:
    """ValueError naming the field where a student of config `cfg` cannot be cut from the teacher
    (head_dim, head grouping, d_model, n_kv_heads, d_ff, vocabulary): checked before any teacher work."""
    if cfg.vocab_size != spec["vocab"]:
        raise ValueError(f"student vocab_size={cfg.vocab_size} must equal the teacher's {spec['vocab']} (the "
                         f"distillation compares their logits token by token)")
    if cfg.head_dim != spec["head_dim"]:
        raise ValueError(f"student head_dim={cfg.head_dim} must equal the teacher's {spec['head_dim']} (RoPE pairs)")
    if cfg.n_heads % cfg.n_kv_heads or cfg.n_heads // cfg.n_kv_heads > spec["n_heads"] // spec["n_kv_heads"]:
        raise ValueError(f"student heads {cfg.n_heads}/{cfg.n_kv_heads} do not fit the teacher's "
                         f"{spec['n_heads']}/{spec['n_kv_heads']} grouping")
    for name, s, t in (("d_model", cfg.d_model, spec["d_model"]), ("n_kv_heads", cfg.n_kv_heads, spec["n_kv_heads"]),
                       ("d_ff", cfg.d_ff, spec["d_ff"])):
        if s > t:
            raise ValueError(f"student {name}={s} is larger than the teacher's {t}")


def plan_subclone(cal: Calibration, spec, cfg: LMConfig) -> SubclonePlan:
    """Importance-ranked dims, heads and neurons for a student of config `cfg` (`check_student_fits`)."""
    check_student_fits(spec, cfg)
    heads = [_pick_heads(h, spec["n_kv_heads"], cfg.n_kv_heads, cfg.n_heads) for h in cal.head_out]
    return SubclonePlan(dims=top_k_indices(cal.residual, cfg.d_model), q_heads=[q for q, _ in heads],
                        kv_heads=[kv for _, kv in heads], neurons=[top_k_indices(n, cfg.d_ff) for n in cal.neurons])


def full_plan(spec) -> SubclonePlan:
    """Keep everything (the lossless, full-size conversion)."""
    n = spec["n_layers"]
    return SubclonePlan(torch.arange(spec["d_model"]), [torch.arange(spec["n_heads"])] * n,
                        [torch.arange(spec["n_kv_heads"])] * n, [torch.arange(spec["d_ff"])] * n)


@torch.no_grad()
def init_from_teacher(student: LM, teacher, plan: SubclonePlan, *, n_init: int | None = None,
                      layer_map: list[int] | None = None, cal: Calibration | None = None,
                      spec: TeacherSpec | None = None) -> list[str]:
    """Subclone the teacher into the student: embeddings, final norm, and the first `n_init` layers
    (layered init) from teacher layers `layer_map`. Returns the names of the student tensors written.
    Fused projections are split and (1 + w) norms folded by `hf_families.layer_weights`."""
    spec = spec or inspect_teacher(teacher.config)
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
    put("norm_f.weight", student.norm_f.weight, cut_norm(final_norm_weight(teacher, spec), None, S, scale("norm"))[0])
    if not cfg.tie_embeddings:
        put("lm_head.weight", student.lm_head.weight, teacher.lm_head.weight[:, S])
    names = spec.norm_names()
    for i in range(n_init):
        t = layer_map[i]
        w, blk = layer_weights(teacher, t, spec), student.blocks[i]
        mix = blk.mixer
        qd, kvd = head_dims(plan.q_heads[t], hd), head_dims(plan.kv_heads[t], hd)
        for slot, hf_name in names.items():
            put(f"blocks.{i}.{slot}.weight", getattr(blk, slot).weight, cut_norm(w[slot], None, S, scale(f"{t}.{hf_name}"))[0])
        hp, hq, gk = mix.h * mix.p, mix.h * mix.n, mix.g * mix.n  # in_proj rows: [z | q | k | v | dt]
        rows = {"q": (hp, hq, qd), "k": (hp + hq, gk, kvd), "v": (hp + hq + gk, gk, kvd)}
        for n, (r0, nr, idx) in rows.items():
            Wn, bn = cut_linear(w[n], w.get(f"{n}_bias"), idx, S)
            put(f"blocks.{i}.mixer.in_proj[{n}]", mix.in_proj.weight[r0:r0 + nr], Wn)
            if bn is not None and mix.in_proj.bias is not None:
                put(f"blocks.{i}.mixer.in_proj.bias[{n}]", mix.in_proj.bias[r0:r0 + nr], bn)
        Wo, bo = cut_linear(w["o"], w.get("o_bias"), S, qd)
        put(f"blocks.{i}.mixer.out_proj.weight", mix.out_proj.weight, Wo)
        if bo is not None and mix.out_proj.bias is not None:
            put(f"blocks.{i}.mixer.out_proj.bias", mix.out_proj.bias, bo)
        if "q_norm" in w:
            full = mix.cfg.qk_norm == "full"
            put(f"blocks.{i}.mixer.q_norm_weight", mix.q_norm_weight, w["q_norm"][qd] if full else w["q_norm"])
            put(f"blocks.{i}.mixer.k_norm_weight", mix.k_norm_weight, w["k_norm"][kvd] if full else w["k_norm"])
        N = plan.neurons[t]
        for n, out_idx, in_idx in (("gate", N, S), ("up", N, S), ("down", S, N)):
            proj = getattr(blk.mlp, f"{n}_proj")
            Wn, bn = cut_linear(w[n], w.get(f"{n}_bias"), out_idx, in_idx)
            put(f"blocks.{i}.mlp.{n}_proj.weight", proj.weight, Wn)
            if bn is not None and proj.bias is not None:
                put(f"blocks.{i}.mlp.{n}_proj.bias", proj.bias, bn)
    return written
