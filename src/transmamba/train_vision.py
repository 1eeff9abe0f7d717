"""`python -m transmamba.train_vision {train-teacher,distill} ...`: the entry point that the vision
commands recorded in docs/results.md use; the same as `transmamba train-teacher|distill`. The recipe
lives in `transmamba.recipes.vision`."""

import argparse
import sys

from transmamba.recipes.vision import distill_main, train_teacher_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="transmamba.train_vision")
    parser.add_argument("command", choices=["train-teacher", "distill"])
    args, rest = parser.parse_known_args(argv)
    return train_teacher_main(rest) if args.command == "train-teacher" else distill_main(rest)


if __name__ == "__main__":
    sys.exit(main())
