"""`transmamba convert`: a pretrained causal LM -> a TransMamba-Switch student, end to end.

    teacher (SmolLM2-135M, or a local HF dir / GGUF file of a family `teachers.families` accepts;
             anything else is refused before any work) and ITS tokenizer (`data.tokenizer: teacher`;
             a named one only with the same vocabulary), used for the data, cache, evaluation, samples
             and saved with the student
      -> the lossless gate (`teachers.check.lossless_gate`): the full-size conversion must
         reproduce the teacher's logits at data.seq_len (and past any sliding window), or nothing runs
      -> calibrate on real text, subclone dims/heads/neurons, layered init of the first n layers
      -> teacher outputs (top-k log-probs + the aligned hidden states) cached once on disk, mmapped
      -> distill:  loss = w_kl * KL_topk(teacher || student) + w_hidden * sum_i w_i (1 - cos_i) + w_ce * CE
                   (w_i = adaptive layer weights, `transmamba.adapt.distill.adaptive_weights`),
                   TransPoints optionally annealed from the sequence length down to the target schedule
      -> evaluate held-out perplexity (teacher and student), save the student (safetensors + config),
         write report.md with the loss curve.

Distillation runs on the one engine (`transmamba.training.engine.fit`): this recipe supplies the
student, the cached teacher batches, the loss (`DistillStep`) and the held-out perplexity.

Recipe switches give the comparison runs at equal tokens: from scratch (`recipe.subclone false,
recipe.distill false`), subcloning + init only (`recipe.distill false`), the full recipe, and the full
recipe with TransPoint annealing (`recipe.anneal_frac > 0`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transmamba.adapt.attention_layers import check_keep_attention, check_switching, costliest, switch_costs
from transmamba.adapt.layer_local import LayerLocalStep, check_cached
from transmamba.adapt.distill import adaptive_layer_loss, token_cosine, token_cosine_ref
from transmamba.teachers.to_switch import (calibrate, check_student_fits, init_from_teacher, layer_map_for,
                                              plan_subclone, switch_config_from_teacher)
from transmamba.adapt.ssm_calibration import calibrate_ssm_paths
from transmamba.teachers.cache import TeacherCache, build_teacher_cache, topk_kl
from transmamba.config import NONE, NONNEG, NONNEG_INT, POSITIVE_INT, TRAIN_RULES, UNIT, check_config, dump_yaml, load_config
from transmamba.evaluation.perplexity import hf_perplexity, lm_perplexity
from transmamba.models.lm import LM
from transmamba.ops.head_loss import head_ce_kl
from transmamba.modules.schedule import ATTENTION_ONLY
from transmamba.hf.student import save_hf
from transmamba.hardware.precision import autocast
from transmamba.training.engine import ENGINE_DEFAULTS, Run, fit, is_main_process, main_process_choice

DEFAULTS = {
    "teacher": "smollm2",
    "name": "convert",
    "out_dir": "runs/convert",
    "seed": 0,
    "student": {"n_layers": 8, "d_model": 384, "n_heads": 6, "n_kv_heads": 2, "d_ff": 1024,
                "conv_activation": None, "switch_gate_bias": True,
                "schedule": {"name": "staggered", "period": 8, "span": 256}},
    "recipe": {"subclone": True, "n_init": None, "layer_map": "uniform", "distill": True,
               "adaptive": True, "anneal_frac": 0.0, "anneal_mode": "together", "ssm_calib": True,
               "local_tokens": 0, "local_train": "block", "local_lr": None,
               "keep_attention": 0, "keep_attention_windows": 4},
    "data": {"tokenizer": "teacher", "cache_dir": "cache/text", "seq_len": 256, "calib_windows": 8,
             "cache_windows": 256, "top_k": 32, "teacher_cache_dir": "cache/teacher_outputs", "sources": None},
    "train": {**copy.deepcopy(ENGINE_DEFAULTS), "tokens": 1_000_000, "batch_size": 8, "lr": 1e-3, "min_lr": 1e-4,
              "warmup_steps": 20, "weight_decay": 0.1, "grad_clip": 1.0, "w_kl": 1.0, "w_hidden": 1.0,
              "hidden_mean": True, "w_ce": 0.5, "temperature": 1.0, "log_every": 10, "eval_every": 0,
              "ckpt_every": 0},
    "device": "cpu",
    "eval": {"batches": 8, "batch_size": 8, "transpoints": [], "speed_context": 1024, "speed_contexts": None,
             "speed_batches": [1], "speed_synthetic": False, "prefill_contexts": [], "ppl_contexts": [], "speed_tokens": 8,
             "speed_rounds": 3, "prefill_rounds": None, "prompts": ["ROMEO:", "To be, or not to be,"], "prompt_tokens": 24},
}


def _student_config(spec: dict, cfg: dict):
    s = dict(cfg["student"])
    return switch_config_from_teacher(spec, layer_map=cfg["recipe"]["layer_map"], **s)


def teacher_info(name: str, teacher) -> dict:
    """What every message, report and summary says of the teacher: name, model_type, parameters."""
    label = "SmolLM2-135M-Instruct" if name == "smollm2" else Path(str(name)).name
    return {"name": label, "path": str(name), "model_type": teacher.config.model_type,
            "params": sum(p.numel() for p in teacher.parameters())}


def _teacher_ppl(teacher, val_ids, seq_len, batch_size, n_batches, cache_file: Path) -> dict:
    """Teacher's held-out perplexity on the same windows as the student's (cached as JSON)."""
    key = f"{seq_len}x{batch_size}x{n_batches}x{len(val_ids)}"
    saved = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    if key in saved:
        return saved[key]
    res = hf_perplexity(teacher, val_ids, batch_size=batch_size, seq_len=seq_len, n_batches=n_batches)
    saved[key] = res
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(saved))
    return res


CONVERT_RULES = {**TRAIN_RULES, "train.w_kl": NONNEG, "train.w_hidden": NONNEG, "train.w_ce": NONNEG,
                 "data.seq_len": POSITIVE_INT, "data.cache_windows": POSITIVE_INT, "data.calib_windows": POSITIVE_INT,
                 "data.top_k": POSITIVE_INT, "eval.batches": POSITIVE_INT, "eval.batch_size": POSITIVE_INT,
                 "student.n_layers": POSITIVE_INT, "student.d_model": POSITIVE_INT, "student.n_heads": POSITIVE_INT,
                 "student.d_ff": POSITIVE_INT, "recipe.anneal_frac": UNIT, "recipe.local_tokens": NONNEG_INT,
                 "recipe.keep_attention": NONNEG_INT, "recipe.keep_attention_windows": POSITIVE_INT,
                 "eval.speed_rounds": POSITIVE_INT, "eval.speed_tokens": POSITIVE_INT,
                 "eval.prefill_rounds": POSITIVE_INT | NONE}


def build_student(teacher, spec, cfg, train_ids):
    """Student LM, subcloned and layer-initialised from the teacher when the recipe says so."""
    scfg = _student_config(spec, cfg)
    torch.manual_seed(cfg["seed"])
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


class DistillStep(nn.Module):
    """loss = w_kl KL_topk(teacher || student) + w_hidden sum_i w_i (1 - cos_i) + w_ce CE (recipe.distill),
    or plain CE; batches are (x, y, topk_idx, topk_logp, *hidden) from the teacher cache.

    The head and its two losses run chunked (`ops.head_loss.head_ce_kl`, no full logits tensor);
    `reference=True` computes the same loss the plain way (the slow twin, and the step as it was
    before: `transmamba bench distill`'s peer)."""

    def __init__(self, student: LM, cfg: dict, layer_map: list[int], dims: torch.Tensor, reference: bool = False):
        super().__init__()
        self.model = student
        self.reference = reference  # full logits, F.cross_entropy, topk_kl, F.cosine_similarity
        self.t, self.rec, self.L = cfg["train"], cfg["recipe"], cfg["data"]["seq_len"]
        self.layer_map = list(layer_map)
        self.register_buffer("dims", torch.as_tensor(dims), persistent=False)

    def forward(self, batch, step: int):
        x, y, topk_idx, topk_logp, *hidden = batch
        t, student = self.t, self.model
        tp = student.transpoints_for(self.L, step)
        distill = self.rec["distill"]
        if student.cfg.final_softcap is None and not self.reference:  # head + losses chunked
            xL, h = student.trunk(x, transpoints=tp, return_hidden=distill)
            w_ce, w_kl = (t["w_ce"], t["w_kl"]) if distill else (1.0, 0.0)
            loss, ce, kl = head_ce_kl(student.norm_f(xL).flatten(0, 1), student.lm_head.weight, y.flatten(),
                                      topk_idx.flatten(0, 1) if distill else None,
                                      topk_logp.flatten(0, 1) if distill else None, w_ce=w_ce, w_kl=w_kl,
                                      T=t["temperature"])
        else:  # the full logits (also for a soft-capped head)
            logits, ce, h = student(x, targets=y, transpoints=tp, return_hidden=True)
            kl = topk_kl(logits if logits.dtype == torch.float64 else logits.float(), topk_idx, topk_logp,
                        T=t["temperature"]) if distill else None
            loss = ce if not distill else t["w_ce"] * ce + t["w_kl"] * kl
        parts = {"loss_ce": ce.detach()}
        if not distill:
            return loss, parts
        parts["loss_kl"] = kl.detach()
        cosine = token_cosine_ref if self.reference else token_cosine
        up = lambda a: a if a.dtype == torch.float64 else a.float()  # noqa: E731  (fp32 or fp64 tests)
        cos = torch.stack([cosine(up(h[i + 1]), up(hidden[i][..., self.dims]))
                           for i in range(len(self.layer_map))])
        parts["loss_hidden"] = adaptive_layer_loss(cos, adaptive=self.rec["adaptive"], normalize=t["hidden_mean"])
        return loss + t["w_hidden"] * parts["loss_hidden"], parts


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


def keep_attention_layers(student, cache: TeacherCache, cfg) -> dict:
    """recipe.keep_attention = k > 0: the k layers whose switch costs most (`adapt.attention_layers`,
    measured on the first recipe.keep_attention_windows cached windows) never switch; the student's
    schedule becomes {"name": "hybrid", "base": <its schedule>, "attention_layers": [...]}."""
    rec, t = cfg["recipe"], cfg["train"]
    k, T = int(rec["keep_attention"]), float(t["temperature"])
    device = next(student.parameters()).device
    windows = []
    for i in range(min(int(rec["keep_attention_windows"]), len(cache))):
        b = cache.batch([i], device=device, hidden=False)
        windows.append((b["x"], b["topk_idx"], b["topk_logp"]))
    t0, was_training = time.perf_counter(), student.training
    student.eval()
    with autocast(device, t["amp"]):
        costs = switch_costs(student, windows, student.transpoints_for(cache.seq_len),
                             lambda z, ti, tl: topk_kl(z, ti, tl, T=T))
    student.train(was_training)
    layers = main_process_choice(costliest(costs, k))  # (k <= n_layers was checked before any work)
    student.set_schedule({"name": "hybrid", "base": student.cfg.schedule, "attention_layers": layers})
    return {"attention_layers": layers, "switch_costs": costs, "keep_attention_s": time.perf_counter() - t0}


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

    def evaluate(m):
        r = lm_perplexity(m, val_ids, batch_size=ev_cfg["batch_size"], seq_len=L, n_batches=ev_cfg["batches"],
                          device=next(m.parameters()).device, amp=t["amp"])
        return {"val_loss": r["val_loss"], "val_ppl": r["val_ppl"]}

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


def check_before_work(cfg: dict, teacher, spec, tok, who: dict) -> dict:
    """Everything that can refuse a conversion, before the data, the teacher cache or training:
    the student's shape against the teacher's, keep_attention against the TransPoints within
    data.seq_len, and the lossless gate. Returns the gate's result."""
    from transmamba.teachers.check import lossless_gate
    from transmamba.modules.schedule import make_schedule

    d, rec = cfg["data"], cfg["recipe"]
    scfg = _student_config(spec, cfg)
    try:
        check_student_fits(spec, scfg)
    except ValueError as e:
        raise ValueError(f"teacher {who['name']}: {e}") from None
    k = int(rec["keep_attention"])  # (0 <= k <= n_layers was checked before the teacher was loaded)
    if k:
        check_switching(k, make_schedule(scfg.schedule).transpoints(scfg.n_layers, int(d["seq_len"]), None),
                        int(d["seq_len"]))
    return lossless_gate(teacher, tok, int(d["seq_len"]), who["name"])


def convert(cfg: dict, progress: bool = True, resume: bool = False) -> dict:
    """Run the whole pipeline for a resolved config; returns the summary (also in summary.json)."""
    from transmamba.data.sources import check_sources, split_ids
    from transmamba.data.text import teacher_tokenizer, tokenizer_key
    from transmamba.teachers.families import inspect_teacher
    from transmamba.teachers.cache import FORMAT_VERSION
    from transmamba.teachers.load import load_teacher

    t_start = time.perf_counter()
    check_config(cfg, CONVERT_RULES)
    if cfg["data"].get("sources") is not None:  # data.sources: see transmamba.data.sources; None = Shakespeare
        check_sources(cfg["data"]["sources"])
    check_keep_attention(int(cfg["recipe"]["keep_attention"]), int(cfg["student"]["n_layers"]))
    teacher, teacher_tok = load_teacher(cfg["teacher"], check=inspect_teacher)  # refuses before reading weights
    spec = inspect_teacher(teacher.config)
    who = teacher_info(cfg["teacher"], teacher)
    d = cfg["data"]
    tok = teacher_tokenizer(d["tokenizer"], teacher_tok, spec.vocab, who["name"], d["cache_dir"])
    gate = check_before_work(cfg, teacher, spec, tok, who)
    train_ids, val_ids, data_key = split_ids(d.get("sources"), tok, d["cache_dir"], seq_len=d["seq_len"])
    out = Path(cfg["out_dir"]) / cfg["name"]
    out.mkdir(parents=True, exist_ok=True)
    student, layer_map, dims = build_student(teacher, spec, cfg, train_ids)
    tok_key = tokenizer_key(tok)
    tkey = f"{str(cfg['teacher']).replace('/', '_')}-tok{tok_key}{data_key}"  # data_key "" for Shakespeare
    tc_dir = Path(d["teacher_cache_dir"]) / f"{tkey}-L{d['seq_len']}-n{d['cache_windows']}-k{d['top_k']}-h{'_'.join(map(str, layer_map))}-f{FORMAT_VERSION}"
    build_teacher_cache(teacher, train_ids, tc_dir, seq_len=d["seq_len"], n_windows=d["cache_windows"],
                        top_k=d["top_k"], hidden_layers=[m + 1 for m in layer_map], progress=progress)
    cache = TeacherCache(tc_dir)
    ev = cfg["eval"]
    teacher_ppl_file = Path(d["teacher_cache_dir"]) / f"teacher_ppl_{tkey}.json"
    teacher_eval = _teacher_ppl(teacher, val_ids, d["seq_len"], ev["batch_size"], ev["batches"], teacher_ppl_file)

    def ppl(seq_len=d["seq_len"], n_batches=ev["batches"], **kw):
        return lm_perplexity(student, val_ids, batch_size=ev["batch_size"], seq_len=seq_len, n_batches=n_batches, **kw)

    init_eval = ppl()
    t_stages = time.perf_counter()
    local = {}
    if cfg["recipe"]["local_tokens"]:
        local = distill_local(student, cache, cfg, layer_map, dims, progress, resume)
        if is_main_process():
            local["local_val_ppl"] = ppl()["val_ppl"]
    if cfg["recipe"]["keep_attention"]:
        local |= keep_attention_layers(student, cache, cfg)
    run = {**local, **distill(student, cache, cfg, layer_map, dims, val_ids, progress, resume)}
    if not is_main_process():
        return run
    t_eval = time.perf_counter()
    final = ppl()
    ppl_by_context = {str(d["seq_len"]): {"student": final["val_ppl"], "teacher": teacher_eval["val_ppl"]}}
    for Lc in ev.get("ppl_contexts") or []:  # longer windows, the student under its own schedule
        n_b = max(1, ev["batches"] * d["seq_len"] // int(Lc))
        st_c = ppl(int(Lc), n_b)
        te_c = _teacher_ppl(teacher, val_ids, int(Lc), ev["batch_size"], n_b, teacher_ppl_file)
        ppl_by_context[str(int(Lc))] = {"student": st_c["val_ppl"], "teacher": te_c["val_ppl"]}
    sweep = {int(P): ppl(transpoints=[int(P)] * student.cfg.n_layers)["val_ppl"] for P in ev["transpoints"]}
    run_cfg = {"model": student.cfg.to_dict(), "data": {"tokenizer": d["tokenizer"], "cache_dir": d["cache_dir"],
                                                        "tokenizer_key": tok_key},
               "convert": cfg, "teacher": who}
    save_hf(student, out / "student", tok, run_info={**run_cfg, "steps": run["steps"], "val_ppl": final["val_ppl"],
                                                     "teacher_val_ppl": teacher_eval["val_ppl"]})
    if (out / "loss.png").exists():
        (out / "loss.png").replace(out / "loss_curve.png")
    summary = {"name": cfg["name"], "teacher_val_ppl": teacher_eval["val_ppl"], "init_val_ppl": init_eval["val_ppl"],
               "val_ppl": final["val_ppl"], "val_tokens": final["val_tokens"], "student_params": student.num_params(False),
               "student_non_embedding_params": student.num_params(), "transpoint_sweep_ppl": sweep,
               "teacher_params": who["params"], "teacher": who, "tokenizer": {"setting": d["tokenizer"],
               "key": tok_key, "size": len(tok)}, "lossless_check": gate, "seq_len": d["seq_len"],
               "ppl_by_context": ppl_by_context,
               "transpoints": student.transpoints_for(d["seq_len"]), **run}
    t_speed = time.perf_counter()
    summary |= speed_and_samples(teacher, student, cfg, tok)
    t_end = time.perf_counter()
    # where the command's wall time went, four parts that add up to wall_s: loading, teacher cache and
    # init eval; the training stages (their own seconds: local_train_s, keep_attention_s, train_s);
    # evaluation and saving; speeds and samples
    summary |= {"setup_s": t_stages - t_start, "stages_s": t_eval - t_stages, "eval_s": t_speed - t_eval,
                "speed_s": t_end - t_speed, "wall_s": t_end - t_start}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "config.yaml").write_text(dump_yaml(cfg))
    write_report(out, summary)
    return summary


def speed_and_samples(teacher, student, cfg, tok) -> dict:
    """Both models, fp32 (an architecture comparison: under bf16 autocast an AVX512-BF16 CPU decodes
    the HF teacher slower than in fp32 and our student faster, which would flatter the student):
    decoding ms/token and cache MB at each `eval.speed_contexts` context and
    `eval.speed_batches` batch (caches filled to its size with `eval.speed_synthetic`, else by a
    real prefill), prefill tokens/s at each `eval.prefill_contexts` length (batch 1), and greedy
    continuations. Each speed is the median of `eval.speed_rounds` rounds that alternate student
    and teacher, so that a drift of a shared machine's speed hits both alike; prefill takes
    `eval.prefill_rounds` rounds (None: as many), as one round of a long prefill is seconds long."""
    from transmamba.evaluation.speed import alternating_medians, decode_speed, teacher_decode_speed, time_ms

    ev, res = cfg["eval"], {}
    student.eval()
    contexts = ev.get("speed_contexts") or ([ev["speed_context"]] if ev.get("speed_context") else [])
    synthetic = bool(ev.get("speed_synthetic"))
    rounds, n = int(ev["speed_rounds"]), ev["speed_tokens"]
    from transmamba.hardware.machine import cpu_model

    res["speed"], res["speed_rounds"], res["speed_threads"] = [], rounds, torch.get_num_threads()
    res["cpu"] = cpu_model()
    for C in contexts:
        for B in ev.get("speed_batches") or [1]:
            kw = dict(synthetic=synthetic, batch=int(B))
            (ms_s, mb_s), (ms_t, mb_t) = alternating_medians(
                [lambda: decode_speed(student, int(C), n, warmup=1, max_s=60, **kw),
                 lambda: teacher_decode_speed(teacher, int(C), n, **kw)], rounds)
            res["speed"].append({"context": int(C), "batch": int(B), "student_tok_s": B * 1e3 / ms_s,
                                 "teacher_tok_s": B * 1e3 / ms_t, "student_cache_mb": mb_s, "teacher_cache_mb": mb_t,
                                 "synthetic_cache": synthetic})
    res["prefill"], res["prefill_rounds"] = [], int(ev.get("prefill_rounds") or rounds)
    for L in ev.get("prefill_contexts") or []:
        idx = torch.randint(0, student.cfg.vocab_size, (1, int(L)))
        with torch.no_grad():
            (t_s,), (t_t,) = alternating_medians(
                [lambda: (time_ms(lambda: student(idx), reps=1, warmup=0),),
                 lambda: (time_ms(lambda: teacher(idx, use_cache=False), reps=1, warmup=0),)], res["prefill_rounds"])
        res["prefill"].append({"context": int(L), "student_tok_s": L / t_s * 1e3, "teacher_tok_s": L / t_t * 1e3})
    samples = []
    for prompt in ev["prompts"]:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            s_out = student.generate(ids, ev["prompt_tokens"], temperature=0)
            t_out = teacher.generate(ids, max_new_tokens=ev["prompt_tokens"], do_sample=False,
                                     pad_token_id=tok.eos_token_id or 0)
        samples.append({"prompt": prompt, "teacher": tok.decode(t_out[0, ids.shape[1]:]),
                        "student": tok.decode(s_out[0, ids.shape[1]:])})
    res["samples"] = samples
    return res


def plot_transpoint_sweep(sweep: dict, png: Path, name: str) -> Path:
    """Held-out perplexity against the TransPoint P used by every layer (0 = pure SSM)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ps = sorted(sweep, key=int)
    ax.plot([int(p) for p in ps], [sweep[p] for p in ps], marker="o")
    ax.set_xlabel("TransPoint P (every layer; tokens before P use attention)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"convert {name}: quality vs TransPoint")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return png


def _schedule_words(tp: list[int]) -> str:
    kept = [i for i, P in enumerate(tp) if P >= ATTENTION_ONLY]
    rest = [P for P in tp if P < ATTENTION_ONLY]
    head = f"layers {kept} keep attention at every position; the other {len(rest)}: " if kept else ""
    if not rest:
        return "attention in every layer"
    if len(set(rest)) == 1:
        return head + f"TransPoint P = {rest[0]}{'' if kept else ' in every layer'} (tokens before P: attention; from P on: the SSM)"
    return head + f"TransPoints {rest} (per layer; tokens before P: attention; from P on: the SSM)"


def write_report(out: Path, s: dict) -> Path:
    """report.md: teacher vs student table (perplexity per context length, decoding and prefill
    speed), the TransPoint sweep, samples, the loss curve; the table is also printed."""
    local = (f"{s['local_tokens']} layer-local + " if s.get("local_tokens") else "")
    train_s = s["train_s"] + s.get("local_train_s", 0.0)
    lines = [f"# transmamba convert: {s['name']}", "",
             f"Student: TransMamba-Switch, {s['student_params'] / 1e6:.1f}M parameters (teacher "
             f"{s['teacher_params'] / 1e6:.1f}M), {_schedule_words(s['transpoints'])}; {local}{s['tokens']} "
             f"end-to-end distillation tokens in {train_s:.0f} s ({s.get('amp', 'none')}).", "",
             f"Teacher: {s['teacher']['name']} ({s['teacher']['model_type']}, {s['teacher']['params'] / 1e6:.1f}M "
             f"parameters), tokenizer of {s['tokenizer']['size']} tokens "
             f"({s['tokenizer']['setting']}); the conversion checked lossless at {s['lossless_check']['seq_len']} "
             f"tokens (max logit diff {s['lossless_check']['rel_logit_diff']:.1g} x the logits' scale, "
             f"{s['lossless_check']['dtype']}).", "",
             f"| metric | teacher ({s['teacher']['name']}) | student | student / teacher |", "|---|---|---|---|"]
    for L, v in s["ppl_by_context"].items():
        lines.append(f"| held-out ppl, {L}-token windows | {v['teacher']:.2f} | {v['student']:.2f} | "
                     f"{v['student'] / v['teacher']:.2f}x |")
    lines.append(f"| held-out ppl at init ({s['seq_len']}) | | {s['init_val_ppl']:.2f} | |")
    if s.get("local_val_ppl"):
        lines.append(f"| held-out ppl after the layer-local stage | | {s['local_val_ppl']:.2f} | |")
    for r in s.get("speed") or []:
        how = ", caches filled to size" if r.get("synthetic_cache") else ""
        b = r.get("batch", 1)
        lines += [f"| decode tok/s at {r['context']} context (batch {b}{how}) | {r['teacher_tok_s']:.1f} | "
                  f"{r['student_tok_s']:.1f} | {r['student_tok_s'] / r['teacher_tok_s']:.2f}x |",
                  f"| cache MB at {r['context']} context, batch {b} | {r['teacher_cache_mb']:.1f} | "
                  f"{r['student_cache_mb']:.1f} | "
                  f"{r['student_cache_mb'] / max(r['teacher_cache_mb'], 1e-9):.2f}x |"]
    for r in s.get("prefill") or []:
        lines.append(f"| prefill tok/s at {r['context']} (batch 1) | {r['teacher_tok_s']:.1f} | {r['student_tok_s']:.1f} | "
                     f"{r['student_tok_s'] / r['teacher_tok_s']:.2f}x |")
    if s.get("speed") or s.get("prefill"):
        rounds = s.get("speed_rounds", 1)
        prefill_rounds = s.get("prefill_rounds", rounds)
        prefill_note = f"; prefill: {prefill_rounds} round(s)" if s.get("prefill") and prefill_rounds != rounds else ""
        lines.append(f"\nSpeeds: fp32 (training ran {s.get('amp', 'none')}: {s.get('amp_reason', '')}), "
                     f"{s.get('cpu', '?')}, {s.get('speed_threads', '?')} thread(s), each the median of "
                     f"{rounds} rounds alternating student and teacher{prefill_note}.")
    if s.get("wall_s") is not None:
        lines.append(f"\nWall time {s['wall_s'] / 60:.1f} min: {s['setup_s']:.0f} s loading, teacher cache and "
                     f"first evaluation; {s['stages_s']:.0f} s training stages; {s['eval_s']:.0f} s evaluation "
                     f"and saving; {s['speed_s']:.0f} s speeds and samples.")
    n_table = len(lines)
    lines.append("")
    if s.get("transpoint_sweep_ppl"):
        lines += ["| TransPoint P (all layers) | held-out ppl |", "|---|---|"]
        lines += [f"| {p} | {v:.2f} |" for p, v in s["transpoint_sweep_ppl"].items()] + [""]
    for smp in s.get("samples", []):
        lines += [f"**{smp['prompt']}**", "", f"- teacher: {smp['teacher']!r}", f"- student: {smp['student']!r}", ""]
    if s.get("transpoint_sweep_ppl"):
        plot_transpoint_sweep(s["transpoint_sweep_ppl"], out / "transpoint_tradeoff.png", s["name"])
        lines += ["![perplexity vs TransPoint](transpoint_tradeoff.png)", ""]
    lines += ["![loss curve](loss_curve.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines[:n_table]))
    for smp in s.get("samples", []):
        print(f"\n{smp['prompt']!r}\n  teacher: {smp['teacher']!r}\n  student: {smp['student']!r}")
    return path


def convert_main(argv: list[str] | None = None) -> dict:
    import argparse

    p = argparse.ArgumentParser(prog="transmamba convert", description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help='"smollm2" or a local HF Llama-family directory')
    p.add_argument("--student", required=True, help="configs/convert/<name>.yaml")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the distillation from its newest checkpoint "
                   "(needs --train.ckpt_every >= 1)")
    args, rest = p.parse_known_args(argv)
    cfg = load_config(args.student, rest, defaults=DEFAULTS)
    if args.teacher:
        cfg["teacher"] = args.teacher
    summary = convert(cfg, progress=not args.quiet, resume=args.resume)
    if is_main_process():
        print(json.dumps({k: v for k, v in summary.items()}, indent=2))
        student = Path(cfg["out_dir"]) / cfg["name"] / "student"
        print(f"\nLoad the student with transformers: import transmamba; from transformers import "
              f"AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(student)!r})")
    return summary
