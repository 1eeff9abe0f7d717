"""`python -m transmamba ...` (e.g. under `torchrun --nproc_per_node N -m transmamba train ...`)."""

import sys

from transmamba.cli import main

sys.exit(main())
