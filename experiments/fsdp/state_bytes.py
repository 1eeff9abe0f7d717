"""Per-rank parameter + gradient + AdamW bytes of the demo student (configs/convert/demo.yaml), measured
from the tensors each rank holds (`transmamba.training.fsdp.state_bytes`: the local shards of
DTensors), in one plain process and on each of N FSDP2 ranks (`transmamba.training.fsdp.Sharded`,
gloo on this CPU). The student is built from the SmolLM2 config alone (`inspect_teacher` +
`switch_config_from_teacher`, as `transmamba.bench.distill.build` does: no teacher weights, no teacher
cache), random weights; one AdamW step on 1 x 160 random tokens (past the TransPoint P = 128, so
both paths of every layer get gradients) creates the gradients and the moments.

    .venv/bin/python experiments/fsdp/state_bytes.py OUT_DIR                      # one process, plain
    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        experiments/fsdp/state_bytes.py OUT_DIR --fsdp                              # 2 FSDP ranks
Each rank writes OUT_DIR/state_bytes_{plain|fsdp}_rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

DEMO = "configs/convert/demo.yaml"


def demo_student():
    from transformers import AutoConfig

    from transmamba.config import load_config
    from transmamba.io.model_dir import check_model_dir
    from transmamba.models.lm import LM
    from transmamba.teachers.families import inspect_teacher
    from transmamba.teachers.load import prepare_smollm2
    from transmamba.teachers.to_switch import switch_config_from_teacher

    config = AutoConfig.from_pretrained(check_model_dir(prepare_smollm2(), weights=False), trust_remote_code=False)
    spec = inspect_teacher(config)  # the architecture only
    student_cfg = load_config(DEMO)["student"]  # demo.yaml over its base chain
    torch.manual_seed(0)
    return LM(switch_config_from_teacher(spec, **student_cfg)), student_cfg


if __name__ == "__main__":
    from transmamba.training.fsdp import Sharded, state_bytes
    from transmamba.training.optim import make_optimizer

    out, fsdp = Path(sys.argv[1]), "--fsdp" in sys.argv
    torch.set_num_threads(1 if fsdp else 2)
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    student, student_cfg = demo_student()
    opt = make_optimizer([student], {"weight_decay": 0.1, "lr": 5e-4, "betas": [0.9, 0.95], "eps": 1e-8})
    n_params = sum(p.numel() for p in student.parameters())
    tok = torch.randint(0, student.cfg.vocab_size, (1, 161), generator=torch.Generator().manual_seed(0))
    if fsdp:
        sh = Sharded(student, student, opt, torch.device("cpu"), "none")
        module, opt, params = sh.module, sh.optimizer, sh.params
    else:
        module, params = student, [p for g in opt.param_groups for p in g["params"]]
    _, loss = module(tok[:, :-1], tok[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    res = {"mode": "fsdp" if fsdp else "plain", "rank": rank, "world": world, "student": student_cfg,
           "n_params": n_params, "loss": loss.item(), "bytes": state_bytes(params, opt)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"state_bytes_{res['mode']}_rank{rank}.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res["bytes"]), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
