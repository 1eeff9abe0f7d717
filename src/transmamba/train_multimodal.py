"""`python -m transmamba.train_multimodal --config ...`: the entry point that the VQA commands recorded
in docs/results.md use; the same as `transmamba train-vqa`. The recipe lives in `transmamba.recipes.vqa`."""

import sys

from transmamba.recipes.vqa import train_vqa_main

if __name__ == "__main__":
    sys.exit(train_vqa_main())
