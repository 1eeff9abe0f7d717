"""Run under torchrun with an output folder: every rank offers its own choice and writes what it
got to <folder>/rank<R>.txt; every file must hold rank 0's choice."""
import os
import sys
from pathlib import Path

import torch.distributed as dist

from transmamba.training.engine import main_process_choice

dist.init_process_group("gloo")
rank = int(os.environ["RANK"])
Path(sys.argv[1], f"rank{rank}.txt").write_text(repr(main_process_choice([rank, rank + 10])))
dist.destroy_process_group()
