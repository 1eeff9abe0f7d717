"""The `transmamba` console script: one entry point, subcommands dispatched to their modules.

    transmamba bench {kernels,lm,convert} [--json] [--quick]
    transmamba train --config configs/lm/<name>.yaml [--key value ...]
    transmamba generate --checkpoint DIR --prompt "..." [--transpoint P]
    transmamba teacher prepare [--cache-dir DIR]
    transmamba teacher check PATH [--json]          (exit 0 only when the conversion is lossless)
    transmamba convert --teacher smollm2 --student configs/convert/<name>.yaml [--key value ...]
    transmamba train-teacher --config configs/vision/vit-fmnist.yaml [--key value ...]
    transmamba distill --config configs/vision/<student>-fmnist.yaml [--key value ...]
    transmamba train-vqa --config configs/multimodal/vqa-fmnist.yaml [--fusion late|modulate|prefix]
                         [--mode scratch|transmamba] [--key value ...]

Heavy modules are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

BENCHES = {
    "kernels": "transmamba.bench.kernels",
    "lm": "transmamba.bench.lm",
    "convert": "transmamba.bench.convert",
}

# subcommand -> (module, function taking the remaining argv)
COMMANDS = {
    "train": ("transmamba.train", "train_main"),
    "generate": ("transmamba.generate", "generate_main"),
    "convert": ("transmamba.convert", "convert_main"),
    "train-teacher": ("transmamba.train_vision", "train_teacher_main"),
    "distill": ("transmamba.train_vision", "distill_main"),
    "train-vqa": ("transmamba.train_multimodal", "train_vqa_main"),
}


def _bench(argv):
    p = argparse.ArgumentParser(prog="transmamba bench", description="benchmarks; ratio = peer/ours (> 1: we are faster)")
    p.add_argument("what", choices=sorted(BENCHES))
    p.add_argument("--json", action="store_true", help="print one JSON object {'results': [...]}")
    p.add_argument("--quick", action="store_true", help="a short run (under ~40 s)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both sides (default: torch's)")
    p.add_argument("--student", default=None, help="convert only: the student's convert config "
                   "(default configs/convert/smollm2-switch-wide.yaml)")
    args = p.parse_args(argv)
    if args.student and args.what != "convert":
        p.error(f"--student applies to 'bench convert' only, not {args.what!r}")
    import torch

    from transmamba.bench.harness import emit

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {"student": args.student} if args.student else {}
    rows = importlib.import_module(BENCHES[args.what]).run(quick=args.quick, **kw)
    for r in rows:
        r.setdefault("threads", torch.get_num_threads())
    emit(rows, args.json)


def _teacher(argv):
    p = argparse.ArgumentParser(prog="transmamba teacher")
    sub = p.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="dequantize SmolLM2's GGUF once into an fp32 safetensors cache")
    prep.add_argument("--cache-dir", default="cache/teachers/smollm2")
    chk = sub.add_parser("check", help="convert a local HF model dir or GGUF file at full size; compare logits")
    chk.add_argument("path")
    chk.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.action == "check":
        import json

        from transmamba.adapt.teacher_check import check_teacher

        res = check_teacher(args.path)
        print(json.dumps(res) if args.json else json.dumps(res, indent=2))
        return 0 if res["lossless"] else 1
    from transmamba.models.hf_llama import prepare_smollm2

    print(prepare_smollm2(args.cache_dir))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    commands = ["bench", "teacher", *COMMANDS]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}; choose from {commands}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        _bench(rest)
    elif cmd == "teacher":
        return _teacher(rest)
    else:  # the subcommands return their summaries; success is exit status 0
        module, fn = COMMANDS[cmd]
        getattr(importlib.import_module(module), fn)(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
