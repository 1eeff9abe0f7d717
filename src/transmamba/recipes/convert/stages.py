"""The stages of `transmamba convert`, in order: the student, the layer-local stage, which layers or
KV heads keep attention, and the end-to-end distillation, each fed by the cached teacher batches.

    build_student(teacher, spec, cfg, train_ids)   subcloned + layer-initialised + SSM-calibrated student
    cache_batches(cache, batch_size, seed, keys)    start_step -> cached teacher batches (resumable)
    distill_local(...)                              every block against its own teacher block (`adapt.layer_local`)
    keep_attention_layers(student, cache, cfg)      recipe.keep_attention: the costliest layers never switch
    keep_kv_heads(student, cache, cfg, tok)         recipe.keep_heads: the top KV heads never switch
    distill(...)                                    KL + adaptive hidden alignment + CE (`adapt.lm_distill`)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from transmamba.adapt.attention_layers import costliest, switch_costs
from transmamba.adapt.head_ranking import (head_switch_costs, kept_heads_schedule, kv_heads_per_layer, random_ranking,
                                           ranking, read_ranking)
from transmamba.adapt.layer_local import LayerLocalStep, check_cached
from transmamba.adapt.lm_distill import DistillStep
from transmamba.adapt.ssm_calibration import calibrate_ssm_paths
from transmamba.hardware.precision import autocast
from transmamba.models.lm import LM
from transmamba.ops.topk_kl import topk_kl
from transmamba.recipes.scaffold import perplexity_eval, seed_everything, seed_of
from transmamba.teachers.cache import TeacherCache
from transmamba.teachers.to_switch import (calibrate, init_from_teacher, layer_map_for, plan_subclone,
                                           switch_config_from_teacher)
from transmamba.training.engine import Run, fit, main_process_choice

SEED = "seed"  # this recipe's seed key


def student_config(spec: dict, cfg: dict):
    s = dict(cfg["student"])
    return switch_config_from_teacher(spec, layer_map=cfg["recipe"]["layer_map"], **s)



def build_student(teacher, spec, cfg, train_ids):
    """Student LM, subcloned and layer-initialised from the teacher when the recipe says so."""
    scfg = student_config(spec, cfg)
    seed_everything(seed_of(cfg, SEED))
    student = LM(scfg)
    rec, d = cfg["recipe"], cfg["data"]
    layer_map = layer_map_for(scfg.n_layers, spec["n_layers"], rec["layer_map"])
    dims = torch.arange(scfg.d_model)
    if rec["subclone"]:
        L = d["seq_len"]
        starts = np.linspace(0, len(train_ids) - L - 1, d["calib_windows"]).astype(np.int64)
        calib = torch.from_numpy(np.stack([np.asarray(train_ids[s:s + L], dtype=np.int64) for s in starts]))
        cal = calibrate(teacher, calib)
        plan = plan_subclone(cal, spec, scfg)
        init_from_teacher(student, teacher, plan, n_init=rec["n_init"], layer_map=layer_map, cal=cal)
        if rec["ssm_calib"]:  # gate, dt, A, norm of the SSM paths fitted to the attention paths
            n_init = scfg.n_layers if rec["n_init"] is None else rec["n_init"]
            calibrate_ssm_paths(student, calib, layers=range(n_init))  # the layers the teacher filled
        dims = plan.dims
    return student, layer_map, dims



def cache_batches(cache: TeacherCache, batch_size: int, seed: int, hidden_keys: list[int]):
    """start_step -> iterator of cached teacher batches (x, y, topk_idx, topk_logp, *hidden), windows
    drawn at random (numpy default_rng(seed)); resuming redraws the skipped choices."""

    def stream(start: int):
        rng = np.random.default_rng(seed)
        step = 0
        while True:
            idx = rng.choice(len(cache), size=batch_size, replace=len(cache) < batch_size)
            if step >= start:
                b = cache.batch(idx)
                yield (b["x"], b["y"], b["topk_idx"], b["topk_logp"], *(b["hidden"][k] for k in hidden_keys))
            step += 1

    return stream



def distill_local(student, cache: TeacherCache, cfg, layer_map, dims, progress=True, resume=False) -> dict:
    """The layer-local stage (`transmamba.adapt.layer_local`): recipe.local_tokens tokens, every block
    against its own teacher block, through the engine (its run directory: <out>/local)."""
    t, rec = cfg["train"], cfg["recipe"]
    L, bs = cfg["data"]["seq_len"], int(t["batch_size"])
    check_cached(layer_map, cache.hidden_layers)
    step = LayerLocalStep(student, layer_map, dims, L, train=rec["local_train"])
    frozen = [p for p in step.frozen() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    tcfg = {**t, "tokens": int(rec["local_tokens"]), "lr": float(rec["local_lr"] or t["lr"]), "eval_every": 0,
            "progress": bool(progress and t.get("progress", True))}
    steps = max(1, math.ceil(int(rec["local_tokens"]) / (bs * L)))
    run = Run(name=f"convert[{cfg['name']}] layer-local", step_module=step,
              batches=cache_batches(cache, bs, cfg["seed"] + 1, [m + 1 for m in layer_map]), total_steps=steps,
              tcfg=tcfg, out_dir=Path(cfg["out_dir"]) / cfg["name"] / "local",
              config={"model": student.cfg.to_dict(), "convert": cfg}, unit="tokens", unit_per_example=L,
              metric_fields=["loss_local"], fingerprint={"model": student.cfg.to_dict(), "stage": "local"},
              device=cfg["device"])
    try:
        res = fit(run, resume=resume)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {"local_steps": res["step"], "local_tokens": res["tokens"], "local_train_s": res["elapsed_s"]}



def cached_windows(student, cache: TeacherCache, n: int) -> list:
    """The first n cached windows as (x, topk_idx, topk_logp) on the student's device (no hidden states)."""
    device = next(student.parameters()).device
    windows = []
    for i in range(min(int(n), len(cache))):
        b = cache.batch([i], device=device, hidden=False)
        windows.append((b["x"], b["topk_idx"], b["topk_logp"]))
    return windows


def switch_cost_of(student, cache: TeacherCache, cfg, costs_fn) -> tuple:
    """(costs_fn(student, windows, the student's TransPoints, top-k KL at train.temperature), seconds):
    the per-layer or per-head switch costs on the first recipe.keep_attention_windows cached windows,
    the student in eval mode under train.amp."""
    T = float(cfg["train"]["temperature"])
    windows = cached_windows(student, cache, cfg["recipe"]["keep_attention_windows"])
    t0, was_training = time.perf_counter(), student.training
    student.eval()
    with autocast(next(student.parameters()).device, cfg["train"]["amp"]):
        costs = costs_fn(student, windows, student.transpoints_for(cache.seq_len),
                         lambda z, ti, tl: topk_kl(z, ti, tl, T=T))
    student.train(was_training)
    return costs, time.perf_counter() - t0


def keep_attention_layers(student, cache: TeacherCache, cfg) -> dict:
    """recipe.keep_attention = k > 0: the k layers whose switch costs most (`adapt.attention_layers`,
    measured on the first recipe.keep_attention_windows cached windows) never switch; the student's
    schedule becomes {"name": "hybrid", "base": <its schedule>, "attention_layers": [...]}."""
    costs, seconds = switch_cost_of(student, cache, cfg, switch_costs)
    k = int(cfg["recipe"]["keep_attention"])
    layers = main_process_choice(costliest(costs, k))  # (k <= n_layers was checked before any work)
    student.set_schedule({"name": "hybrid", "base": student.cfg.schedule, "attention_layers": layers})
    return {"attention_layers": layers, "switch_costs": costs, "keep_attention_s": seconds}


def keep_kv_heads(student, cache: TeacherCache, cfg, tok) -> dict:
    """recipe.keep_heads = K > 0: the K highest-ranked KV heads (`adapt.head_ranking`) never switch; the
    student's schedule becomes {"name": "head_hybrid", "base": <its schedule>, "kept_heads": [[layer,
    kv_head], ...], "n_kv_heads": ...} (saved with it). recipe.keep_heads_by "switch_cost": the rise in
    top-k KL to the teacher when the head alone switches at its TransPoint, on the first
    recipe.keep_attention_windows cached windows; "retrieval": the drop in the answer's log-probability
    on the retrieval probe (`evaluation.retrieval_probe.rank_heads`, data.seq_len-token prompts) when
    the head alone is the SSM; "random": K heads drawn by the recipe's seed (the control). recipe.keep_heads_ranking (a
    ranking.json of `transmamba heads`, e.g. of the teacher) replaces the ranking. Records kept_heads and head_costs ([layer, kv_head, cost], highest first)."""
    rec = cfg["recipe"]
    if rec.get("keep_heads_ranking"):  # a ranking computed once (`transmamba heads`), e.g. on the teacher
        ranked, seconds = read_ranking(rec["keep_heads_ranking"], kv_heads_per_layer(student)), 0.0
    elif rec["keep_heads_by"] == "retrieval":
        from transmamba.evaluation.retrieval_probe import rank_heads

        t0, was_training = time.perf_counter(), student.training
        student.eval()
        with autocast(next(student.parameters()).device, cfg["train"]["amp"]):
            ranked = rank_heads(student, tok, by="retrieval", lengths=(int(cfg["data"]["seq_len"]),),
                                seed=int(cfg["seed"]))
        student.train(was_training)
        seconds = time.perf_counter() - t0
    elif rec["keep_heads_by"] == "random":  # the control: K heads drawn by the recipe's seed
        ranked, seconds = random_ranking(kv_heads_per_layer(student), int(cfg["seed"])), 0.0
    else:
        scores, seconds = switch_cost_of(student, cache, cfg, head_switch_costs)
        ranked = ranking(scores)
    ranked = main_process_choice([[int(i), int(j), float(s)] for i, j, s in ranked])
    n_kv = kv_heads_per_layer(student)
    spec = kept_heads_schedule(student.cfg.schedule, ranked, int(rec["keep_heads"]),
                               n_kv[0] if len(set(n_kv)) == 1 else n_kv)
    student.set_schedule(spec)
    return {"kept_heads": spec["kept_heads"], "head_costs": ranked, "keep_heads_s": seconds}


def distill(student, cache: TeacherCache, cfg, layer_map, dims, val_ids, progress=True, resume=False) -> dict:
    """Train the student on the cached teacher outputs through the engine (plain CE when
    recipe.distill is false); TransPoints optionally annealed towards the target schedule."""
    t, rec = cfg["train"], cfg["recipe"]
    L, bs = cfg["data"]["seq_len"], int(t["batch_size"])
    steps = max(1, math.ceil(int(t["tokens"]) / (bs * L)))
    target = student.cfg.schedule
    if rec["anneal_frac"] > 0:
        student.set_schedule({"name": "annealed", "target": target, "mode": rec["anneal_mode"],
                              "steps": max(1, int(rec["anneal_frac"] * steps))}, persist=False)
    ev_cfg = cfg["eval"]
    evaluate = perplexity_eval(val_ids, batch_size=ev_cfg["batch_size"], seq_len=L, n_batches=ev_cfg["batches"],
                               amp=t["amp"])
    out = Path(cfg["out_dir"]) / cfg["name"]
    run = Run(name=f"convert[{cfg['name']}]", step_module=DistillStep(student, cfg, layer_map, dims),
              batches=cache_batches(cache, bs, cfg["seed"], [m + 1 for m in layer_map]), total_steps=steps,
              tcfg={**t, "progress": bool(progress and t.get("progress", True))}, out_dir=out,
              config={"model": student.cfg.to_dict(), "convert": cfg}, evaluate=evaluate, unit="tokens",
              unit_per_example=L, metric_fields=["val_loss", "val_ppl", "loss_ce", "loss_kl", "loss_hidden"],
              fingerprint={"model": student.cfg.to_dict()}, best_key="val_loss", device=cfg["device"])
    try:
        res = fit(run, resume=resume)
    finally:
        student.set_schedule(target)
    return {"steps": res["step"], "tokens": res["tokens"], "train_s": res["elapsed_s"], "tok_per_s": res["tok_per_s"],
            "processes": res["processes"], "amp": res["amp"], "amp_reason": res["amp_reason"]}
