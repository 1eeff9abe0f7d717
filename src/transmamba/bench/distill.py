"""`transmamba bench distill`: one distillation step of a converted SmolLM2 student, ours vs as before.

One step = forward, loss, backward, gradient clipping and the AdamW update of `DistillStep` (the
loss of `transmamba convert`) on a batch shaped like the teacher cache's (8 x 256 tokens, top-32
log-probabilities, one aligned hidden state per layer). Weights and batch are random: the cost of a
step does not depend on their values.

    ours = the default recipe: `train.amp: auto` (bf16 autocast where this machine runs bf16 fast,
           `hardware.precision`; fp32 master weights and SSD state), the chunked head + CE + KL
           (`ops.head_loss`), freed memory kept for reuse (`training.heap`)
    peer = the same step as before these: fp32, full logits with `F.cross_entropy` + `topk_kl`,
           `F.cosine_similarity`, glibc's default heap

Rows: tokens/s of each (best of `rounds` alternating rounds of `steps` steps, after a warm-up
step each) and the peak extra resident memory of one step (MiB). Where auto picks bf16, a third
side times our step in fp32 (`ours_fp32_ms`, `bf16_speedup` = ours_fp32_ms / ours_ms): what the
precision alone buys on this machine. `amp_ours` says which precision ran and why.
"""

from __future__ import annotations

import time

import torch

from transmamba.bench.harness import peak_memory_mb, row

STUDENT_CONFIG = "configs/convert/smollm2-switch.yaml"


def build(student_config: str = STUDENT_CONFIG, batch_size: int = 8, seq_len: int = 256, top_k: int = 32):
    """(student LM, its recipe config, a teacher-cache-shaped batch) for the given convert config."""
    from transmamba.teachers.families import inspect_teacher
    from transmamba.teachers.to_switch import layer_map_for, switch_config_from_teacher
    from transmamba.config import load_config
    from transformers import AutoConfig

    from transmamba.teachers.load import prepare_smollm2
    from transmamba.models.lm import LM
    from transmamba.recipes.convert import DEFAULTS

    from transmamba.io.model_dir import check_model_dir

    config = AutoConfig.from_pretrained(check_model_dir(prepare_smollm2(), weights=False), trust_remote_code=False)
    spec = inspect_teacher(config)  # the architecture only: no weights
    cfg = load_config(student_config, defaults=DEFAULTS)
    torch.manual_seed(0)
    student = LM(switch_config_from_teacher(spec, **cfg["student"]))
    layer_map = layer_map_for(student.cfg.n_layers, spec["n_layers"], cfg["recipe"]["layer_map"])
    g = torch.Generator().manual_seed(0)
    V, B, L = spec["vocab"], batch_size, seq_len
    tok = torch.randint(0, V, (B, L + 1), generator=g)
    topk_idx = torch.stack([torch.randperm(V, generator=g)[:top_k] for _ in range(B * L)]).view(B, L, top_k)
    topk_logp = torch.log_softmax(torch.randn(B, L, top_k, generator=g), -1)
    hidden = [torch.randn(B, L, spec["d_model"], generator=g).half().float() for _ in layer_map]
    return student, cfg, layer_map, (tok[:, :-1], tok[:, 1:], topk_idx, topk_logp, *hidden)


def step_fn(student, cfg, layer_map, batch, *, amp: str, reference: bool):
    """One optimizer step of the convert recipe's loss, as the engine runs it."""
    from transmamba.hardware.precision import autocast
    from transmamba.recipes.convert import DistillStep
    from transmamba.training.optim import make_optimizer

    module = DistillStep(student, cfg, layer_map, torch.arange(student.cfg.d_model), reference=reference)
    opt = make_optimizer([student], cfg["train"])
    params = [p for p in student.parameters() if p.requires_grad]
    device = torch.device("cpu")

    def one():
        with autocast(device, amp):
            loss, _ = module(batch, 1000)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, float(cfg["train"]["grad_clip"]))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return one


def rows(student_config: str = STUDENT_CONFIG, steps: int = 2, rounds: int = 2, batch_size: int = 8) -> list[dict]:
    from transmamba.hardware.precision import resolve_amp
    from transmamba.training import heap

    student, cfg, layer_map, batch = build(student_config, batch_size=batch_size)
    n_tok = batch[0].numel()
    precision = resolve_amp(cfg["train"]["amp"], "cpu")
    sides = {"ours": dict(amp=precision.amp, reference=False, heap=cfg["train"]["retain_heap"]),
             "peer": dict(amp="none", reference=True, heap=False)}
    if precision.amp != "none":
        sides["ours_fp32"] = dict(amp="none", reference=False, heap=cfg["train"]["retain_heap"])
    best = {k: float("inf") for k in sides}
    fns = {k: step_fn(student, cfg, layer_map, batch, amp=v["amp"], reference=v["reference"]) for k, v in sides.items()}
    for _ in range(rounds):
        for k, v in sides.items():
            heap.retain_freed_memory(v["heap"])
            fns[k]()  # warm-up (optimizer state, autocast caches, heap)
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[k]()
            best[k] = min(best[k], (time.perf_counter() - t0) / steps * 1e3)
    mem = {}
    for k, v in list(sides.items())[:2]:
        heap.retain_freed_memory(v["heap"])
        mem[k] = peak_memory_mb(fns[k])
    heap.retain_freed_memory(False)
    return [row("distill step", int(batch[0].shape[1]), best["ours"], best["peer"],
                tok_per_s_ours=round(n_tok / best["ours"] * 1e3, 1), tok_per_s_peer=round(n_tok / best["peer"] * 1e3, 1),
                peak_mb_ours=round(mem["ours"], 1), peak_mb_peer=round(mem["peer"], 1), batch=int(batch[0].shape[0]),
                amp_ours=str(precision), student=student_config,
                student_params_m=round(student.num_params(False) / 1e6, 1),
                **({"ours_fp32_ms": round(best["ours_fp32"], 3), "bf16_speedup": round(best["ours_fp32"] / best["ours"], 3)}
                   if "ours_fp32" in best else {}))]


def run(quick: bool = False, student: str | None = None) -> list[dict]:
    import os

    student = student or STUDENT_CONFIG
    if not os.path.exists(student):
        raise FileNotFoundError(f"student config {student!r} not found")
    if quick:
        return rows(student, steps=1, rounds=1, batch_size=2)
    return rows(student)
