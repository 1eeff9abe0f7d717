"""Run by tests/training/test_fsdp.py, in one process or under torchrun: the tiny LM of
ddp_lm_script.py trained by the LM recipe with train.parallel ddp or fsdp; each rank writes the
engine's summary (losses, per-rank state bytes) to OUT/fit_rank<r>.json.

    python -m torch.distributed.run --standalone --nproc_per_node N fsdp_lm_script.py OUT STEPS [HALT]
        [--resume] [--parallel ddp|fsdp] [--ac]
"""

import json
import os
import sys
from pathlib import Path

import torch

import transmamba.recipes.lm as lm
from ddp_lm_script import config, data

if __name__ == "__main__":
    argv = sys.argv[1:]
    parallel = argv[argv.index("--parallel") + 1] if "--parallel" in argv else "ddp"
    args = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--parallel")]
    out, steps = args[0], int(args[1])
    halt = int(args[2]) if len(args) > 2 else None
    torch.set_num_threads(1)
    cfg = config(out, steps, halt)
    cfg["train"].update(parallel=parallel, activation_checkpointing="--ac" in argv, amp="none")
    fit = lm.fit

    def recording_fit(run, resume=False):
        res = fit(run, resume=resume)
        Path(out, f"fit_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(res))
        return res

    lm.fit = recording_fit
    lm.train(cfg, data=data(), resume="--resume" in argv)
