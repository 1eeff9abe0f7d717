"""Run by tests/training/test_multiprocess.py under torchrun: a tiny real LM (Switch layers with a
random TransPoint schedule) trained by the LM recipe on a synthetic token stream.

    python -m torch.distributed.run --standalone --nproc_per_node N ddp_lm_script.py OUT_DIR STEPS [HALT] [--resume]
"""

import sys

import numpy as np
import torch

from transmamba.recipes.lm import TextData, train

V = 32


def config(out_dir: str, steps: int, halt: int | None) -> dict:
    model = {"arch": "transmamba", "vocab_size": V, "d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 8,
             "d_state": 8, "chunk_size": 8, "max_seq_len": 16,
             "schedule": {"name": "random", "choices": [0, 5, 16], "eval": 8}}
    train_cfg = {"tokens": steps * 4 * 16, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1,
                 "log_every": 1, "eval_every": 3, "eval_batches": 1, "ckpt_every": 2, "progress": False,
                 "halt_at_step": halt, "threads": 1}
    return {"name": "ddp", "out_dir": out_dir, "device": "cpu", "seed": 5, "model": model, "train": train_cfg}


def data() -> TextData:
    rng = np.random.default_rng(0)
    ids = (np.arange(3000) % V).astype(np.uint16)
    noise = rng.random(3000) < 0.2
    ids[noise] = rng.integers(0, V, noise.sum())
    return TextData(ids, (np.arange(200) % V).astype(np.uint16), V, "synthetic")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--resume"]
    out, steps = args[0], int(args[1])
    halt = int(args[2]) if len(args) > 2 else None
    torch.set_num_threads(1)
    train(config(out, steps, halt), data=data(), resume="--resume" in sys.argv)
