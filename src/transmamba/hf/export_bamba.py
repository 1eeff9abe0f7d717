"""Export a layer-wise hybrid student as a native transformers `BambaForCausalLM` checkpoint.

`export_bamba(lm, dir)` writes config.json + model.safetensors that stock
`AutoModelForCausalLM.from_pretrained(dir)` loads without our code (`transmamba export --to bamba`).
Every check runs first (`bamba_plan`): anything that does not map exactly is a ValueError naming
the layer and the feature, and nothing is written.

What maps (ours -> Bamba):
    embed, norm_f, lm_head (tied or not)     model.embed_tokens, model.final_layernorm, lm_head
                                              (tie_word_embeddings)
    norm1 / norm2 (RMSNorm, norm_eps)         input_layernorm / pre_ff_layernorm (rms_norm_eps; the
                                              gated norms use the same eps on both sides)
    mlp gate/up/down (act silu|gelu_tanh|gelu, bias)   feed_forward.* (hidden_act, mlp_bias); one
                                              intermediate_size for every layer
    attention layers -> "full_attention" (attn_layer_indices), self_attn.q/k/v/o_proj:
      - CausalSelfAttention (arch transformer / hybrid)
      - a Switch layer whose TransPoint is ATTENTION_ONLY at every length, whose conv is the
        identity (conv_activation None, taps [0 .. 0 1], zero bias): q, k, v are then the rows of
        in_proj; its z, dt, A_log, D and gated-norm weights are unused and dropped
      RoPE in the rotate-half layout of full head_dim with theta^(-2j/n): rope_parameters
      {"rope_type": "default", rope_theta, partial_rotary_factor 1.0} (Bamba's own default, 0.5,
      is overridden); a Switch attention path without RoPE: partial_rotary_factor 0.0 (no rotation)
      GQA: num_key_value_heads; head_dim
    SSM layers -> "linear_attention", mamba.*:
      - Mamba2 (arch mamba2 / hybrid): 1:1 (its parameters are laid out as HF Mamba2Mixer's)
      - a Switch layer whose TransPoint is 0 at every length, conv activation silu and
        n_kv_heads == n_heads: in_proj rows [z | q | k | v | dt] -> [z | x=v | B=k | C=q | dt],
        conv channels [q | k | v] -> [v | k | q], mamba_n_heads = n_heads, mamba_d_head =
        mamba_d_state = head_dim, mamba_n_groups = n_heads (C is per head; the gated norm's groups
        of d_inner / n_groups = head_dim channels are ours, h p / g with g = h), D = 0 without use_D,
        time_step_limit (0, inf) (ours: no clamp), mamba_conv_bias True, mamba_chunk_size
      d_inner must be an integer multiple of d_model (Bamba's mamba_expand is an int).
    A student without attention layers (arch mamba2) is written with use_cache=False: transformers'
    mask code for Bamba needs at least one attention layer in its cache (forward works; its
    generate() with a cache does not, a transformers limitation).

What is refused (ValueError "layer i: ..."):
    a Switch layer with 0 < P < some length, or a P that depends on the length (TransPoints are
    read from the schedule at several lengths); head-level TransPoints (a layer whose KV heads
    switch at different P: `head_hybrid`); on an attention layer a conv that is not the
    identity; on an SSM layer a conv activation other than silu or n_kv_heads < n_heads (B per kv
    head but C per query head: Bamba's B and C share n_groups); qk_norm, sliding_window,
    attn_scale other than head_dim^-1/2, attn_softcap, RoPE tables (rope_inv_freq,
    rope_attention_factor != 1); in_proj/out_proj biases, a non-zero z gate bias; post_norms,
    pre_norms off, embed_scale != 1, final_softcap; MLP widths, attention or SSM shapes, RoPE
    bases, activations or dt limits that differ between layers (Bamba has one value of each);
    a Mamba2 conv without bias or with in/out_proj biases; a non-silu MLP with SSM layers (Bamba's
    hidden_act is also the conv's activation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from transmamba.io.files import atomic_dir, publish_dir
from transmamba.models.lm import LM
from transmamba.modules.attention import CausalSelfAttention
from transmamba.modules.mamba2 import Mamba2
from transmamba.modules.schedule import ATTENTION_ONLY
from transmamba.modules.switch import SwitchMixer

HIDDEN_ACT = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}  # our mlp_act -> HF ACT2FN


def _probe_lengths(lm: LM) -> list[int]:
    """Lengths at which the schedule's TransPoints are read (a length-dependent P shows up)."""
    m = max(int(lm.cfg.max_seq_len), 1)
    return sorted({1, 2, 3, 7, 64, m - 1 if m > 1 else 1, m, 2 * m, 2 ** 20})


def _switch_kinds(lm: LM) -> list[str | None]:
    """Per layer: "attention" (P = ATTENTION_ONLY at every length), "ssm" (P = 0 at every
    length), None for a layer that is not a Switch layer; a ValueError for anything else."""
    kinds: list[str | None] = [None] * lm.cfg.n_layers
    if lm.cfg.arch != "transmamba":
        return kinds
    per_len = {L: lm.transpoints_for(L) for L in _probe_lengths(lm)}
    for i in range(lm.cfg.n_layers):
        heads = {L: tp[i] for L, tp in per_len.items() if isinstance(tp[i], (list, tuple))}
        if heads:
            L, P = next(iter(heads.items()))
            raise ValueError(f"layer {i}: head-level TransPoints (layer {i}: KV heads with different TransPoints, "
                             f"L={L}: P={list(P)}) have no Bamba counterpart: a Bamba layer is all attention or all "
                             "Mamba; only layer-wise hybrids export to Bamba")
        ps = {L: int(tp[i]) for L, tp in per_len.items()}
        if all(P == 0 for P in ps.values()):
            kinds[i] = "ssm"
        elif all(P >= ATTENTION_ONLY for P in ps.values()):
            kinds[i] = "attention"
        else:
            shown = ", ".join(f"L={L}: P={P}" for L, P in ps.items())
            raise ValueError(f"layer {i}: TransPoint is neither 0 nor beyond any length ({shown}); only "
                             "layer-wise hybrids (every P 0 or ATTENTION_ONLY) export to Bamba")
    return kinds


def _check_switch_common(i: int, m: SwitchMixer) -> None:
    c = m.cfg
    refusals = [
        (c.bias, "in_proj bias (SwitchConfig.bias)"),
        (c.out_bias if c.out_bias is not None else c.bias, "out_proj bias (SwitchConfig.out_bias)"),
        (c.qk_norm is not None, f"qk_norm={c.qk_norm!r}"),
        (m.z_bias is not None and bool(m.z_bias.detach().abs().max() > 0), "a non-zero z gate bias (gate_bias)"),
    ]
    for bad, what in refusals:
        if bad:
            raise ValueError(f"layer {i}: {what} has no Bamba counterpart")


def _check_switch_attention(i: int, m: SwitchMixer) -> None:
    c = m.cfg
    _check_switch_common(i, m)
    w, b = m.conv_weight.detach(), m.conv_bias.detach()
    ident = torch.zeros_like(w)
    ident[:, -1] = 1
    if c.conv_activation is not None or not torch.equal(w, ident) or bool(b.abs().max() > 0):
        raise ValueError(f"layer {i}: an attention layer's q/k/v conv is not the identity (conv_activation="
                         f"{c.conv_activation!r}, identity taps: {torch.equal(w, ident)}, zero bias: "
                         f"{not bool(b.abs().max() > 0)}); Bamba's attention has no conv")
    refusals = [
        (c.sliding_window is not None, f"sliding_window={c.sliding_window}"),
        (c.attn_softcap is not None, f"attn_softcap={c.attn_softcap}"),
        (c.attn_scale is not None and c.attn_scale != c.head_dim ** -0.5, f"attn_scale={c.attn_scale}"),
        (c.rope and c.rope_inv_freq is not None, "a RoPE table (rope_inv_freq)"),
        (c.rope and c.rope_attention_factor != 1.0, f"rope_attention_factor={c.rope_attention_factor}"),
    ]
    for bad, what in refusals:
        if bad:
            raise ValueError(f"layer {i}: {what} has no Bamba counterpart")


def _check_switch_ssm(i: int, m: SwitchMixer, d_model: int) -> None:
    c = m.cfg
    _check_switch_common(i, m)
    if c.conv_activation != "silu":
        raise ValueError(f"layer {i}: an SSM layer's conv_activation={c.conv_activation!r}; Bamba's Mamba "
                         "layer applies hidden_act (silu) after its conv")
    if m.g != m.h:
        raise ValueError(f"layer {i}: an SSM layer with n_kv_heads={m.g} < n_heads={m.h} (B per kv head, C per "
                         "query head) has no Bamba layout: Bamba's B and C share mamba_n_groups")
    if (m.h * m.p) % d_model:
        raise ValueError(f"layer {i}: d_inner = n_heads * head_dim = {m.h * m.p} is not a multiple of "
                         f"d_model={d_model} (Bamba's mamba_expand is an integer)")


def _check_mamba2(i: int, m: Mamba2) -> None:
    refusals = [
        (m.in_proj.bias is not None or m.out_proj.bias is not None, "in_proj/out_proj biases"),
        (m.conv1d.bias is None, "a conv without bias"),
        (m.d_inner % m.d_model != 0, f"d_inner={m.d_inner} not a multiple of d_model={m.d_model}"),
        (m.norm.norm_before_gate, "norm_before_gate"),
    ]
    for bad, what in refusals:
        if bad:
            raise ValueError(f"layer {i}: Mamba-2 {what} has no Bamba counterpart")


def _agree(what: str, values: dict[int, object]) -> object:
    """The one value every layer has for `what` (Bamba has one); a ValueError naming the layers."""
    distinct = sorted({repr(v) for v in values.values()})
    if len(distinct) > 1:
        first = next(iter(values.items()))
        other = next((i, v) for i, v in values.items() if repr(v) != repr(first[1]))
        raise ValueError(f"layer {other[0]}: {what} = {other[1]} differs from layer {first[0]}'s {first[1]}; "
                         f"Bamba has one {what} for all layers")
    return next(iter(values.values()))


def bamba_plan(lm: LM) -> dict:
    """Check that `lm` maps exactly onto Bamba and return the BambaConfig kwargs (no weights)."""
    cfg = lm.cfg
    model_refusals = [
        (cfg.post_norms, "post_norms"), (not cfg.pre_norms, "pre_norms off"),
        (cfg.embed_scale != 1.0, f"embed_scale={cfg.embed_scale}"),
        (cfg.final_softcap is not None, f"final_softcap={cfg.final_softcap}"),
        (cfg.mlp_act not in HIDDEN_ACT, f"mlp_act={cfg.mlp_act!r}"),
    ]
    for bad, what in model_refusals:
        if bad:
            raise ValueError(f"model: {what} has no Bamba counterpart")
    roles = _switch_kinds(lm)
    attn, ssm = {}, {}  # layer -> the shape that must agree across layers
    mlp = {}
    for i, block in enumerate(lm.blocks):
        m = block.mixer
        mlp[i] = block.mlp.gate_proj.out_features
        layout = BAMBA_LAYOUTS.get(block.kind)
        if layout is None:
            raise ValueError(f"layer {i}: a {type(m).__name__} mixer (kind {block.kind!r}) has no Bamba counterpart")
        bamba_kind, shape = layout.plan(i, m, roles[i], cfg.d_model)
        (attn if bamba_kind == "attention" else ssm)[i] = shape
        if block.mlp.gate_proj.in_features != cfg.d_model:
            raise ValueError(f"layer {i}: MLP input width differs from d_model")
    d_ff = _agree("MLP width (intermediate_size)", mlp)
    hidden_act = HIDDEN_ACT[cfg.mlp_act]
    if ssm and hidden_act != "silu":
        raise ValueError(f"model: mlp_act={cfg.mlp_act!r} with SSM layers {sorted(ssm)}: Bamba's hidden_act is "
                         "both the MLP's and the Mamba conv's activation, which is silu in ours")
    a = _agree("attention shape (heads, kv heads, head_dim, RoPE, RoPE theta)", attn) if attn else None
    s = _agree("Mamba shape (heads, head dim, state, groups, conv, expand, chunk, dt limit)", ssm) if ssm else None
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=d_ff,
              num_hidden_layers=cfg.n_layers, hidden_act=hidden_act, rms_norm_eps=cfg.norm_eps,
              tie_word_embeddings=bool(cfg.tie_embeddings), mlp_bias=bool(cfg.mlp_bias),
              attention_bias=False, mamba_proj_bias=False, mamba_conv_bias=True,
              max_position_embeddings=int(cfg.max_seq_len), attn_layer_indices=sorted(attn))
    if a is not None:
        kw.update(num_attention_heads=a["heads"], num_key_value_heads=a["kv_heads"], head_dim=a["head_dim"],
                  rope_parameters={"rope_type": "default", "rope_theta": a["rope_theta"] or 10000.0,
                                   "partial_rotary_factor": 1.0 if a["rope"] else 0.0})
    else:  # unused: no attention layer. transformers' causal-mask code needs an attention layer in
        # a cache, so a pure-SSM Bamba runs with use_cache=False (its generate() fails in transformers)
        kw.update(use_cache=False, num_attention_heads=1, num_key_value_heads=1, head_dim=cfg.d_model,
                  rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta),
                                   "partial_rotary_factor": 1.0})
    if s is not None:
        kw.update(mamba_n_heads=s["n_heads"], mamba_d_head=s["d_head"], mamba_d_state=s["d_state"],
                  mamba_n_groups=s["n_groups"], mamba_d_conv=s["d_conv"], mamba_expand=s["expand"],
                  mamba_chunk_size=s["chunk_size"], time_step_limit=s["time_step_limit"])
    else:  # unused: no SSM layer (must still pass BambaConfig's checks)
        kw.update(mamba_n_heads=1, mamba_d_head=2 * cfg.d_model, mamba_expand=2, mamba_n_groups=1)
    return kw


def _switch_ssm_weights(m: SwitchMixer, prefix: str) -> dict[str, torch.Tensor]:
    """A Switch SSM layer (n_kv_heads == n_heads) in BambaMixer's layout."""
    hp = m.h * m.p
    z, q, k, v, dt = torch.split(m.in_proj.weight.detach(), [hp, m.h * m.n, m.g * m.n, m.g * m.p, m.h])
    cq, ck, cv = torch.split(m.conv_weight.detach(), [m.h * m.n, m.g * m.n, m.g * m.p])
    bq, bk, bv = torch.split(m.conv_bias.detach(), [m.h * m.n, m.g * m.n, m.g * m.p])
    D = m.D.detach() if m.D is not None else torch.zeros_like(m.A_log.detach())
    return {
        prefix + "in_proj.weight": torch.cat([z, v, k, q, dt]),
        prefix + "conv1d.weight": torch.cat([cv, ck, cq])[:, None, :],
        prefix + "conv1d.bias": torch.cat([bv, bk, bq]),
        prefix + "dt_bias": m.dt_bias.detach(), prefix + "A_log": m.A_log.detach(), prefix + "D": D,
        prefix + "norm.weight": m.norm_weight.detach(), prefix + "out_proj.weight": m.out_proj.weight.detach(),
    }


def _switch_attention_weights(m: SwitchMixer, prefix: str) -> dict[str, torch.Tensor]:
    """A Switch attention layer (identity conv): q, k, v are in_proj's rows."""
    _, q, k, v, _ = torch.split(m.in_proj.weight.detach(), [m.h * m.p, m.h * m.n, m.g * m.n, m.g * m.p, m.h])
    return {prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v,
            prefix + "o_proj.weight": m.out_proj.weight.detach()}


# ------------------------------------------------------------------------------ per mixer kind
# How each mixer kind (`Block.kind`, `transmamba.modules.registry`) maps onto a Bamba layer. This is
# per type by nature (each kind's weights rewritten into Bamba's own layout), so the table lives
# here, with the rest of the Bamba mapping, rather than in the mixer registry: a new mixer kind
# exports only once someone writes its entry; until then it is refused by name.
#   plan(i, mixer, role, d_model) -> ("attention" | "ssm", the shape that must agree across layers),
#       after the kind's checks (a ValueError naming layer i and the feature);
#       role: a Switch layer's "attention" / "ssm" (`_switch_kinds`), None for other kinds
#   weights(mixer, "model.layers.{i}.", role) -> its BambaForCausalLM state dict entries
#       (role: "attention" or "ssm", as the plan placed the layer)

def _attention_plan(i: int, m: CausalSelfAttention, role, d_model: int) -> tuple[str, dict]:
    return "attention", dict(heads=m.n_heads, kv_heads=m.n_kv_heads, head_dim=m.head_dim, rope=True,
                             rope_theta=float(m.rope_theta))


def _attention_weights(m: CausalSelfAttention, prefix: str, role: str) -> dict[str, torch.Tensor]:
    return {prefix + "self_attn." + k: t.detach() for k, t in m.state_dict().items()}


def _mamba2_plan(i: int, m: Mamba2, role, d_model: int) -> tuple[str, dict]:
    _check_mamba2(i, m)
    return "ssm", dict(n_heads=m.nheads, d_head=m.headdim, d_state=m.d_state, n_groups=m.ngroups,
                       d_conv=m.d_conv, expand=m.d_inner // m.d_model, chunk_size=m.chunk_size,
                       time_step_limit=tuple(float(x) for x in m.dt_limit))


def _mamba2_weights(m: Mamba2, prefix: str, role: str) -> dict[str, torch.Tensor]:
    sd = {prefix + "mamba." + k: t.detach() for k, t in m.state_dict().items()}
    if m.D is None:  # Bamba always adds D x
        sd[prefix + "mamba.D"] = torch.zeros_like(m.A_log.detach())
    return sd


def _switch_plan(i: int, m: SwitchMixer, role, d_model: int) -> tuple[str, dict]:
    if role == "attention":
        _check_switch_attention(i, m)
        return "attention", dict(heads=m.h, kv_heads=m.g, head_dim=m.n, rope=bool(m.cfg.rope),
                                 rope_theta=float(m.cfg.rope_theta) if m.cfg.rope else None)
    _check_switch_ssm(i, m, d_model)
    return "ssm", dict(n_heads=m.h, d_head=m.p, d_state=m.n, n_groups=m.h, d_conv=m.cfg.d_conv,
                       expand=m.h * m.p // d_model, chunk_size=m.cfg.chunk_size,
                       time_step_limit=(0.0, float("inf")))


def _switch_weights(m: SwitchMixer, prefix: str, role: str) -> dict[str, torch.Tensor]:
    if role == "attention":
        return _switch_attention_weights(m, prefix + "self_attn.")
    return _switch_ssm_weights(m, prefix + "mamba.")


class BambaLayout(NamedTuple):
    plan: Callable[..., tuple[str, dict]]
    weights: Callable[..., dict[str, torch.Tensor]]


BAMBA_LAYOUTS = {  # mixer kind -> its Bamba mapping
    "attention": BambaLayout(_attention_plan, _attention_weights),
    "mamba2": BambaLayout(_mamba2_plan, _mamba2_weights),
    "transmamba": BambaLayout(_switch_plan, _switch_weights),
}


def bamba_state_dict(lm: LM, plan: dict) -> dict[str, torch.Tensor]:
    """BambaForCausalLM's state dict for `lm` (after `bamba_plan` accepted it)."""
    sd = {"model.embed_tokens.weight": lm.embed.weight.detach(),
          "model.final_layernorm.weight": lm.norm_f.weight.detach()}
    if not plan["tie_word_embeddings"]:
        sd["lm_head.weight"] = lm.lm_head.weight.detach()
    attn = set(plan["attn_layer_indices"])
    for i, block in enumerate(lm.blocks):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = block.norm1.weight.detach()
        sd[p + "pre_ff_layernorm.weight"] = block.norm2.weight.detach()
        for name, t in block.mlp.state_dict().items():
            sd[p + "feed_forward." + name] = t.detach()
        sd.update(BAMBA_LAYOUTS[block.kind].weights(block.mixer, p, "attention" if i in attn else "ssm"))
    return {k: v.contiguous().clone() for k, v in sd.items()}


def to_bamba(lm: LM, **config_kwargs):
    """A transformers `BambaForCausalLM` computing what `lm` computes (float32, eval mode);
    config_kwargs (token ids, ...) go into its BambaConfig. A ValueError if `lm` does not map."""
    from transformers import BambaConfig, BambaForCausalLM

    plan = bamba_plan(lm)
    config = BambaConfig(**{**plan, **config_kwargs})
    sd = bamba_state_dict(lm, plan)
    model = BambaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (plan["tie_word_embeddings"] and k == "lm_head.weight")]
    if missing or unexpected:  # a bug of this mapping, not the user's
        raise RuntimeError(f"Bamba state dict mismatch: missing {missing}, unexpected {unexpected}")
    if plan["tie_word_embeddings"]:
        model.tie_weights()
    return model.eval()


def export_bamba(lm: LM, dir: str | os.PathLike, **config_kwargs) -> Path:
    """Write `lm` as a native Bamba checkpoint in `dir` (must be absent or empty): config.json,
    model.safetensors, generation_config.json. Every refusal happens before anything is written."""
    dir = Path(dir)
    if dir.exists() and (not dir.is_dir() or any(dir.iterdir())):
        raise FileExistsError(f"{dir} exists and is not an empty directory; choose a new output directory")
    model = to_bamba(lm, **config_kwargs)  # all checks: nothing written yet
    tmp = atomic_dir(dir)
    model.save_pretrained(str(tmp))
    if dir.exists():
        dir.rmdir()  # empty (checked above)
    return publish_dir(tmp, dir)
