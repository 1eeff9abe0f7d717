"""`transmamba convert`: a pretrained causal LM -> a TransMamba-Switch student, end to end.

    teacher (SmolLM2-135M, or a local HF dir / GGUF file of a family `adapt.hf_families` accepts;
             anything else is refused before any work)
      -> calibrate on real text, subclone dims/heads/neurons, layered init of the first n layers
      -> teacher outputs (top-k log-probs + the aligned hidden states) cached once on disk, mmapped
      -> distill:  loss = w_kl * KL_topk(teacher || student) + w_hidden * sum_i w_i (1 - cos_i) + w_ce * CE
                   (w_i = adaptive layer weights, `transmamba.adapt.distill.adaptive_weights`),
                   TransPoints optionally annealed from the sequence length down to the target schedule
      -> evaluate held-out perplexity (teacher and student), save the student (safetensors + config),
         write report.md with the loss curve.

Recipe switches give the comparison runs at equal tokens: from scratch (`recipe.subclone false,
recipe.distill false`), subcloning + init only (`recipe.distill false`), the full recipe, and the full
recipe with TransPoint annealing (`recipe.anneal_frac > 0`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from transmamba.adapt.distill import adaptive_layer_loss, token_cosine
from transmamba.adapt.ssm_calibration import calibrate_ssm_paths
from transmamba.adapt.llama_to_switch import calibrate, init_from_teacher, layer_map_for, plan_subclone, switch_config_from_teacher
from transmamba.adapt.teacher_cache import TeacherCache, build_teacher_cache, topk_kl
from transmamba.checkpoint import save_checkpoint
from transmamba.config import dump_yaml, load_config
from transmamba.models.lm import LM
from transmamba.run_log import MetricsLog, plot_loss_curve
from transmamba.modules.schedule import make_schedule
from transmamba.train import evaluate, lr_at

DEFAULTS = {
    "teacher": "smollm2",
    "name": "convert",
    "out_dir": "runs/convert",
    "seed": 0,
    "student": {"n_layers": 8, "d_model": 384, "n_heads": 6, "n_kv_heads": 2, "d_ff": 1024,
                "conv_activation": None, "switch_gate_bias": True,
                "schedule": {"name": "staggered", "period": 8, "span": 256}},
    "recipe": {"subclone": True, "n_init": None, "layer_map": "uniform", "distill": True,
               "adaptive": True, "anneal_frac": 0.0, "anneal_mode": "together", "ssm_calib": True},
    "data": {"tokenizer": "smollm2", "cache_dir": "cache/text", "seq_len": 256, "calib_windows": 8,
             "cache_windows": 256, "top_k": 32, "teacher_cache_dir": "cache/teacher_outputs"},
    "train": {"tokens": 1_000_000, "batch_size": 8, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 20,
              "weight_decay": 0.1, "grad_clip": 1.0, "w_kl": 1.0, "w_hidden": 1.0, "hidden_mean": True, "w_ce": 0.5,
              "temperature": 1.0, "log_every": 10, "eval_every": 0},
    "eval": {"batches": 8, "batch_size": 8, "transpoints": [], "speed_context": 1024, "speed_tokens": 8,
             "prompts": ["ROMEO:", "To be, or not to be,"], "prompt_tokens": 24},
}


def _student_config(spec: dict, cfg: dict):
    s = dict(cfg["student"])
    return switch_config_from_teacher(spec, layer_map=cfg["recipe"]["layer_map"], **s)


def _teacher_ppl(teacher, val_ids, seq_len, batch_size, n_batches, cache_file: Path) -> dict:
    """Teacher's held-out perplexity on the same windows as the student's (cached as JSON)."""
    key = f"{seq_len}x{batch_size}x{n_batches}x{len(val_ids)}"
    if cache_file.exists():
        saved = json.loads(cache_file.read_text())
        if key in saved:
            return saved[key]
    from transmamba.data.text import eval_batches

    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(val_ids, batch_size, seq_len, max_windows=n_batches * batch_size):
            logits = teacher(x).logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())) * y.numel()
            count += y.numel()
    res = {"val_loss": total / count, "val_ppl": math.exp(total / count), "val_tokens": count}
    saved = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    saved[key] = res
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(saved))
    return res


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


def distill(student, cache: TeacherCache, cfg, layer_map, dims, val_ids, log: MetricsLog, progress=True):
    """The training loop (distillation, or plain CE when recipe.distill is false)."""
    t, rec = cfg["train"], cfg["recipe"]
    L, bs = cfg["data"]["seq_len"], t["batch_size"]
    steps = max(1, math.ceil(t["tokens"] / (bs * L)))
    target = student.cfg.schedule
    if rec["anneal_frac"] > 0:
        student.schedule = make_schedule({"name": "annealed", "target": target, "mode": rec["anneal_mode"],
                                          "steps": max(1, int(rec["anneal_frac"] * steps))})
    decay = [p for n, p in student.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t["lr"], betas=(0.9, 0.95))
    rng = np.random.default_rng(cfg["seed"])
    hidden_keys = [m + 1 for m in layer_map]  # hidden_states[t + 1] is teacher layer t's output
    student.train()
    t0, tokens = time.time(), 0
    bar = tqdm(range(steps), desc=f"convert[{cfg['name']}]", disable=not progress)
    for step in bar:
        lr = lr_at(step, lr=t["lr"], min_lr=t["min_lr"], warmup_steps=t["warmup_steps"], total_steps=steps)
        for g in opt.param_groups:
            g["lr"] = lr
        b = cache.batch(rng.choice(len(cache), size=bs, replace=len(cache) < bs))
        logits, ce, hidden = student(b["x"], targets=b["y"], transpoints=student.transpoints_for(L, step),
                                     return_hidden=True)
        parts = {"ce": ce}
        loss = t["w_ce"] * ce if rec["distill"] else ce
        if rec["distill"]:
            parts["kl"] = topk_kl(logits.float(), b["topk_idx"], b["topk_logp"], T=t["temperature"])
            cos = torch.stack([token_cosine(hidden[i + 1].float(), b["hidden"][k][..., dims])
                               for i, k in enumerate(hidden_keys)])
            parts["hidden"] = adaptive_layer_loss(cos, adaptive=rec["adaptive"], normalize=t["hidden_mean"])
            loss = loss + t["w_kl"] * parts["kl"] + t["w_hidden"] * parts["hidden"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {step} ({ {k: float(v) for k, v in parts.items()} })")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), t["grad_clip"])
        opt.step()
        tokens += bs * L
        tps = tokens / (time.time() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", ce=f"{ce.item():.3f}", tok_s=f"{tps:.0f}")
        last = step == steps - 1
        if step % t["log_every"] == 0 or last:
            row = {"step": step, "tokens": tokens, "train_loss": ce.item(), "lr": lr, "tok_per_s": tps,
                   "elapsed_s": time.time() - t0, **{f"loss_{k}": v.item() for k, v in parts.items()}}
            if last or (t["eval_every"] and step and step % t["eval_every"] == 0):
                ev = evaluate(student, val_ids, cfg["eval"]["batch_size"], L, cfg["eval"]["batches"], torch.device("cpu"))
                row |= {"val_loss": ev["val_loss"], "val_ppl": ev["val_ppl"]}
                student.train()
            log.log(**row)
    student.schedule = make_schedule(target)
    return {"steps": steps, "tokens": tokens, "train_s": time.time() - t0, "tok_per_s": tokens / (time.time() - t0)}


def convert(cfg: dict, progress: bool = True) -> dict:
    """Run the whole pipeline for a resolved config; returns the summary (also in summary.json)."""
    from transmamba.data.text import token_ids
    from transmamba.adapt.hf_families import inspect_teacher
    from transmamba.models.hf_llama import load_teacher

    teacher, _ = load_teacher(cfg["teacher"], check=inspect_teacher)  # refuses before reading weights
    spec = inspect_teacher(teacher.config)
    out = Path(cfg["out_dir"]) / cfg["name"]
    out.mkdir(parents=True, exist_ok=True)
    d = cfg["data"]
    train_ids = token_ids("train", d["tokenizer"], d["cache_dir"])
    val_ids = token_ids("val", d["tokenizer"], d["cache_dir"])
    student, layer_map, dims = build_student(teacher, spec, cfg, train_ids)
    tc_dir = Path(d["teacher_cache_dir"]) / f"{cfg['teacher'].replace('/', '_')}-L{d['seq_len']}-n{d['cache_windows']}-k{d['top_k']}-h{'_'.join(map(str, layer_map))}"
    build_teacher_cache(teacher, train_ids, tc_dir, seq_len=d["seq_len"], n_windows=d["cache_windows"],
                        top_k=d["top_k"], hidden_layers=[m + 1 for m in layer_map], progress=progress)
    cache = TeacherCache(tc_dir)
    ev = cfg["eval"]
    teacher_eval = _teacher_ppl(teacher, val_ids, d["seq_len"], ev["batch_size"], ev["batches"],
                                Path(d["teacher_cache_dir"]) / f"teacher_ppl_{cfg['teacher'].replace('/', '_')}.json")
    log_path = out / "metrics.csv"
    log_path.unlink(missing_ok=True)
    log = MetricsLog(log_path, fields=["step", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "tok_per_s",
                                       "elapsed_s", "loss_ce", "loss_kl", "loss_hidden"])
    init_eval = evaluate(student, val_ids, ev["batch_size"], d["seq_len"], ev["batches"], torch.device("cpu"))
    run = distill(student, cache, cfg, layer_map, dims, val_ids, log, progress)
    final = evaluate(student, val_ids, ev["batch_size"], d["seq_len"], ev["batches"], torch.device("cpu"))
    sweep = {}
    for P in ev["transpoints"]:
        student.schedule = make_schedule(int(P))
        sweep[int(P)] = evaluate(student, val_ids, ev["batch_size"], d["seq_len"], ev["batches"], torch.device("cpu"))["val_ppl"]
    student.schedule = make_schedule(student.cfg.schedule)
    run_cfg = {"model": student.cfg.to_dict(), "data": {"tokenizer": d["tokenizer"], "cache_dir": d["cache_dir"]},
               "convert": cfg}
    save_checkpoint(out / "student", student, None, run["steps"], run_cfg,
                    extra={"val_ppl": final["val_ppl"], "teacher_val_ppl": teacher_eval["val_ppl"]})
    plot_loss_curve(log_path, out / "loss_curve.png", title=f"convert {cfg['name']}")
    summary = {"name": cfg["name"], "teacher_val_ppl": teacher_eval["val_ppl"], "init_val_ppl": init_eval["val_ppl"],
               "val_ppl": final["val_ppl"], "val_tokens": final["val_tokens"], "student_params": student.num_params(False),
               "student_non_embedding_params": student.num_params(), "transpoint_sweep_ppl": sweep,
               "transpoints": student.transpoints_for(d["seq_len"]), **run}
    summary |= speed_and_samples(teacher, student, cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "config.yaml").write_text(dump_yaml(cfg))
    write_report(out, summary)
    return summary


def speed_and_samples(teacher, student, cfg) -> dict:
    """Decode speed and cache memory at `eval.speed_context` for both models; greedy continuations."""
    from transmamba.bench.convert import _decode_teacher
    from transmamba.bench.lm import _decode
    from transmamba.data.text import load_tokenizer

    ev, res = cfg["eval"], {}
    student.eval()
    if ev["speed_context"]:
        ms_s, mb_s = _decode(student, ev["speed_context"], ev["speed_tokens"], warmup=1, max_s=60)
        ms_t, mb_t = _decode_teacher(teacher, ev["speed_context"], ev["speed_tokens"])
        res["speed"] = {"context": ev["speed_context"], "student_tok_s": 1e3 / ms_s, "teacher_tok_s": 1e3 / ms_t,
                        "student_cache_mb": mb_s, "teacher_cache_mb": mb_t}
    tok = load_tokenizer(cfg["data"]["tokenizer"], cfg["data"]["cache_dir"])
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


def write_report(out: Path, s: dict) -> Path:
    """report.md: teacher vs student table, the TransPoint sweep, samples, the loss curve."""
    sp = s.get("speed", {})
    lines = [f"# transmamba convert: {s['name']}", "",
             f"Student: TransMamba-Switch, {s['student_params'] / 1e6:.1f}M parameters, TransPoints "
             f"{s['transpoints']}; {s['tokens']} training tokens in {s['train_s']:.0f} s.", "",
             "| model | held-out ppl | decode tok/s | cache MB |", "|---|---|---|---|",
             f"| teacher (SmolLM2-135M) | {s['teacher_val_ppl']:.2f} | {sp.get('teacher_tok_s', float('nan')):.1f} | "
             f"{sp.get('teacher_cache_mb', float('nan')):.1f} |",
             f"| student at init | {s['init_val_ppl']:.2f} | | |",
             f"| student | {s['val_ppl']:.2f} | {sp.get('student_tok_s', float('nan')):.1f} | "
             f"{sp.get('student_cache_mb', float('nan')):.1f} |", ""]
    if sp:
        lines += [f"Decoding measured at a context of {sp['context']} tokens, batch 1.", ""]
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
    print("\n".join(lines[:10]))
    return path


def convert_main(argv: list[str] | None = None) -> dict:
    import argparse

    p = argparse.ArgumentParser(prog="transmamba convert", description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help='"smollm2" or a local HF Llama-family directory')
    p.add_argument("--student", required=True, help="configs/convert/<name>.yaml")
    p.add_argument("--quiet", action="store_true")
    args, rest = p.parse_known_args(argv)
    cfg = load_config(args.student, rest, defaults=DEFAULTS)
    if args.teacher:
        cfg["teacher"] = args.teacher
    summary = convert(cfg, progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items()}, indent=2))
    return summary
