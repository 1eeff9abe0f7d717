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

After the layer-local stage, `recipe.keep_attention = k` keeps the k layers whose switch costs most on
attention, or `recipe.keep_heads = K` the K highest-ranked KV heads (`recipe.keep_heads_by`:
switch_cost | retrieval | random, `adapt.head_ranking`; or `recipe.keep_heads_ranking`: a
ranking.json of `transmamba heads`); the schedule is saved with the student.
Stages: `recipes.convert.stages`; the loss: `adapt.lm_distill.DistillStep`; speeds and samples:
`evaluation.speed.speed_and_samples`; the report: `recipes.convert.report` (the teacher-vs-student
report.md of `evaluation.report_md`, the one `transmamba eval` writes).

Recipe switches give the comparison runs at equal tokens: from scratch (`recipe.subclone false,
recipe.distill false`), subcloning + init only (`recipe.distill false`), the full recipe, and the full
recipe with TransPoint annealing (`recipe.anneal_frac > 0`).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from transmamba.adapt.attention_layers import check_keep_attention, check_switching
from transmamba.config import (NONE, NONNEG, NONNEG_INT, POSITIVE_INT, TRAIN_RULES, UNIT, Rule, check_config,
                               load_config, one_of)
from transmamba.evaluation.perplexity import hf_perplexity, lm_perplexity
from transmamba.evaluation.report import out_of_domain_row
from transmamba.evaluation.speed import speed_and_samples
from transmamba.hf.student import save_hf
from transmamba.recipes.convert.report import write_report
from transmamba.recipes.convert.stages import (build_student, distill, distill_local, keep_attention_layers,
                                               keep_kv_heads, student_config)
from transmamba.recipes.scaffold import recipe_main, write_result
from transmamba.teachers.cache import TeacherCache, build_teacher_cache
from transmamba.teachers.to_switch import check_student_fits
from transmamba.training.engine import ENGINE_DEFAULTS, is_main_process

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
               "keep_attention": 0, "keep_attention_windows": 4,
               "keep_heads": 0, "keep_heads_by": "switch_cost", "keep_heads_ranking": None},  # K > 0: the top K KV heads never switch
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
                 "eval.prefill_rounds": POSITIVE_INT | NONE, "recipe.keep_heads": NONNEG_INT,
                 "recipe.keep_heads_by": one_of("switch_cost", "retrieval", "random"),
                 "recipe.keep_heads_ranking": NONE | Rule("a path to a ranking.json of `transmamba heads`",
                                                          lambda v: isinstance(v, str) and bool(v))}



def check_keep_heads(rec: dict, n_heads: int | None = None, what: str = "") -> None:
    """Refuse, naming the keys, recipe.keep_heads together with recipe.keep_attention > 0 (layers or KV
    heads keep attention, not both), and more kept heads than the student's n_heads KV heads."""
    K = int(rec["keep_heads"])
    if K and int(rec["keep_attention"]):
        raise ValueError(f"recipe.keep_heads ({K}) and recipe.keep_attention ({rec['keep_attention']}) together are "
                         f"refused: keep whole layers or single KV heads on attention, set one of them to 0")
    if n_heads is not None and K > n_heads:
        raise ValueError(f"recipe.keep_heads must be in [0, {n_heads}] (the student's KV heads: {what}), got {K}")


def check_before_work(cfg: dict, teacher, spec, tok, who: dict) -> dict:
    """Everything that can refuse a conversion, before the data, the teacher cache or training:
    the student's shape against the teacher's, keep_attention against the TransPoints within
    data.seq_len, keep_heads against the student's KV heads, and the lossless gate. Returns the gate's
    result."""
    from transmamba.teachers.check import lossless_gate
    from transmamba.modules.schedule import make_schedule

    d, rec = cfg["data"], cfg["recipe"]
    scfg = student_config(spec, cfg)
    try:
        check_student_fits(spec, scfg)
    except ValueError as e:
        raise ValueError(f"teacher {who['name']}: {e}") from None
    k = int(rec["keep_attention"])  # (0 <= k <= n_layers was checked before the teacher was loaded)
    if k:
        check_switching(k, make_schedule(scfg.schedule).transpoints(scfg.n_layers, int(d["seq_len"]), None),
                        int(d["seq_len"]))
    n_kv = int(scfg.n_kv_heads or scfg.n_heads)
    check_keep_heads(rec, scfg.n_layers * n_kv, f"{scfg.n_layers} layers x {n_kv}")
    if rec["keep_heads_ranking"]:
        from transmamba.adapt.head_ranking import read_ranking

        read_ranking(rec["keep_heads_ranking"], [n_kv] * scfg.n_layers)  # a bad file is refused here
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
    check_keep_heads(cfg["recipe"])
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
    if cfg["recipe"]["keep_heads"]:
        local |= keep_kv_heads(student, cache, cfg, tok)
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
    ood = out_of_domain_row(student, teacher, tok, seq_len=d["seq_len"], batch_size=ev["batch_size"],
                            n_batches=ev["batches"])  # text in neither split: what the student kept outside it
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
               "ppl_by_context": ppl_by_context, "out_of_domain": ood,
               "transpoints": student.transpoints_for(d["seq_len"]), **run}
    t_speed = time.perf_counter()
    summary |= speed_and_samples(teacher, student, cfg, tok)
    t_end = time.perf_counter()
    # where the command's wall time went, four parts that add up to wall_s: loading, teacher cache and
    # init eval; the training stages (their own seconds: local_train_s, keep_attention_s, train_s);
    # evaluation and saving; speeds and samples
    summary |= {"setup_s": t_stages - t_start, "stages_s": t_eval - t_stages, "eval_s": t_speed - t_eval,
                "speed_s": t_end - t_speed, "wall_s": t_end - t_start}
    write_result(out / "summary.json", summary, config_yaml=cfg)
    write_report(out, summary, d.get("sources"))
    return summary


def _load_hint(cfg: dict, _summary: dict) -> None:
    student = Path(cfg["out_dir"]) / cfg["name"] / "student"
    print(f"\nLoad the student with transformers: import transmamba; from transformers import "
          f"AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(student)!r})")


def _build(path, overrides, args) -> dict:
    if path is None:
        raise ValueError("--student is required: the student's config, e.g. configs/convert/smollm2-switch-wide.yaml")
    cfg = load_config(path, overrides, defaults=DEFAULTS)
    if args.teacher:
        cfg["teacher"] = args.teacher
    return cfg


def convert_main(argv: list[str] | None = None) -> dict:
    """`transmamba convert --student FILE [--teacher T] [--quiet] [--resume] [--section.key VALUE ...]`."""
    flags = ((("--teacher",), dict(default=None, help='"smollm2" or a local HF Llama-family directory')),
             (("--quiet",), dict(action="store_true")))
    return recipe_main(argv, DEFAULTS, lambda cfg, args: convert(cfg, progress=not args.quiet, resume=args.resume),
                       __doc__, prog="transmamba convert", config_flag="--student", resume=True, flags=flags,
                       build=_build, indent=2, after=_load_hint)
