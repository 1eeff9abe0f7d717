"""Run under torchrun: every rank offers its own choice, every rank must print rank 0's."""
import os

import torch.distributed as dist

from transmamba.training.engine import main_process_choice

dist.init_process_group("gloo")
rank = int(os.environ["RANK"])
print(f"rank {rank}: {main_process_choice([rank, rank + 10])}", flush=True)
dist.destroy_process_group()
