"""The `transmamba` console script: one entry point, subcommands dispatched to their modules.

    transmamba env [--json]                       (CPU/GPU, matmul GFLOP/s, the precision amp auto picks)
    transmamba bench {kernels,lm,convert,distill} [--json] [--quick]
    transmamba train --config configs/lm/<name>.yaml [--key value ...]
    transmamba generate --checkpoint DIR --prompt "..." [--transpoint P]
    transmamba eval --model DIR [--teacher smollm2|DIR] [--suite default] [--quick] [--out DIR]
    transmamba heads PATH [--by retrieval|switch_cost] [--lengths ...] [--trials N] [--out DIR] [--json]
    transmamba teacher prepare [--cache-dir DIR]
    transmamba teacher check PATH [--json]          (exit 0 only when the conversion is lossless)
    transmamba teacher sample --tokens N [--teacher smollm2|DIR] [--out DIR] [--batch-size B] [--top-p P] [--seed S]
    transmamba convert --teacher smollm2 --student configs/convert/<name>.yaml [--key value ...]
    transmamba export --to bamba DIR --model STUDENT_DIR   (a native transformers Bamba; layer-wise hybrids only)
    transmamba train-teacher --config configs/vision/vit-fmnist.yaml [--key value ...]
    transmamba distill --config configs/vision/<student>-fmnist.yaml [--key value ...]
    transmamba train-vqa --config configs/multimodal/vqa-fmnist.yaml [--fusion late|modulate|prefix]
    transmamba train-retrieval --config configs/multimodal/retrieval-grids.yaml [--role teacher|student] [--fusion none|cross_mamba|cross_attention]
                         [--mode scratch|transmamba] [--key value ...]

Heavy modules are imported only by the subcommand that needs them.

Errors: a mistake the user can fix (a missing or unreadable file, a bad config key or value, an
output directory in use by another run, a corrupt checkpoint, a diverged run) prints one line
`error: <message>` on stderr and exits with status 2, as argparse's usage errors do. `--debug`
anywhere on the command line shows the full traceback instead. Ctrl-C exits with status 130.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import linecache
import os
import sys
import warnings

from transmamba.errors import UserError

# exceptions that report a user's mistake, not a bug (see `is_user_error`)
USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, FloatingPointError)

BENCHES = {
    "kernels": "transmamba.bench.kernels",
    "lm": "transmamba.bench.lm",
    "convert": "transmamba.bench.convert",
    "distill": "transmamba.bench.distill",
}

# subcommand -> (module, function taking the remaining argv)
COMMANDS = {
    "train": ("transmamba.recipes.lm", "train_main"),
    "generate": ("transmamba.inference.generate", "generate_main"),
    "eval": ("transmamba.evaluation.report", "eval_main"),
    "heads": ("transmamba.evaluation.heads_cli", "heads_main"),
    "convert": ("transmamba.recipes.convert", "convert_main"),
    "train-teacher": ("transmamba.recipes.vision", "train_teacher_main"),
    "distill": ("transmamba.recipes.vision", "distill_main"),
    "train-vqa": ("transmamba.recipes.vqa", "train_vqa_main"),
    "train-retrieval": ("transmamba.recipes.retrieval", "train_retrieval_main"),
}


def _bench(argv):
    p = argparse.ArgumentParser(prog="transmamba bench", description="benchmarks; ratio = peer/ours (> 1: we are faster)")
    p.add_argument("what", choices=sorted(BENCHES))
    p.add_argument("--json", action="store_true", help="print one JSON object {'results': [...]}")
    p.add_argument("--quick", action="store_true", help="a short run (under ~40 s)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both sides (default: torch's)")
    p.add_argument("--student", default=None, help="convert and distill only: the student's convert config "
                   "(defaults: configs/convert/smollm2-switch-wide.yaml, configs/convert/smollm2-switch.yaml)")
    args = p.parse_args(argv)
    if args.student and args.what not in ("convert", "distill"):
        p.error(f"--student applies to 'bench convert' and 'bench distill' only, not {args.what!r}")
    import torch

    from transmamba.bench.harness import emit

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {"student": args.student} if args.student else {}
    rows = importlib.import_module(BENCHES[args.what]).run(quick=args.quick, **kw)
    from transmamba.hardware.machine import machine_fields

    machine = machine_fields()  # every row says what it was measured on
    rows = [{**r, **{k: v for k, v in machine.items() if k not in r}} for r in rows]
    emit(rows, args.json)


def _env(argv):
    p = argparse.ArgumentParser(prog="transmamba env", description="what this machine is and which precision "
                                "amp auto picks (fp32 / bf16 matmul measured now)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    import json

    from transmamba.hardware.machine import environment, format_environment

    env = environment()
    print(json.dumps(env) if args.json else format_environment(env))
    return 0


def _teacher(argv):
    p = argparse.ArgumentParser(prog="transmamba teacher")
    sub = p.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="dequantize SmolLM2's GGUF once into an fp32 safetensors cache")
    prep.add_argument("--cache-dir", default="cache/teachers/smollm2")
    chk = sub.add_parser("check", help="convert a local HF model dir or GGUF file at full size; compare logits")
    chk.add_argument("path")
    chk.add_argument("--json", action="store_true", help="print one JSON object")
    smp = sub.add_parser("sample", help="the teacher writes its own corpus (resumable; a data source: teacher_samples)")
    smp.add_argument("--tokens", type=int, required=True, help="sample until the corpus holds at least N tokens")
    smp.add_argument("--teacher", default="smollm2", help="smollm2 or a local HF model directory")
    smp.add_argument("--out", default=None, help="corpus directory (default cache/teacher_samples/<teacher>)")
    smp.add_argument("--batch-size", type=int, default=8, help="prompts sampled together (one shard)")
    smp.add_argument("--top-p", type=float, default=0.95)
    smp.add_argument("--temperature", type=float, default=1.0)
    smp.add_argument("--max-new-tokens", type=int, default=256)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.action == "sample":
        from transmamba.teachers.sample import sample_main

        sample_main(args)
        return 0
    if args.action == "check":
        import json

        from transmamba.teachers.check import check_teacher

        res = check_teacher(args.path)
        print(json.dumps(res) if args.json else json.dumps(res, indent=2))
        return 0 if res["lossless"] else 1
    from transmamba.teachers.load import prepare_smollm2

    print(prepare_smollm2(args.cache_dir))
    return 0


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json")


def _export(argv):
    p = argparse.ArgumentParser(prog="transmamba export",
                                description="write a student as a native transformers checkpoint")
    p.add_argument("--to", required=True, choices=["bamba"], help="the transformers architecture")
    p.add_argument("dir", help="output directory (absent or empty)")
    p.add_argument("--model", required=True, help="the student: a transformers-format or checkpoint directory")
    args = p.parse_args(argv)
    import json
    import shutil
    from pathlib import Path

    from transmamba.hf.export_bamba import export_bamba
    from transmamba.hf.student import is_hf_dir, load_model

    lm = load_model(args.model)
    kw = {}
    if is_hf_dir(args.model):  # keep the student's token ids
        src = json.loads((Path(args.model) / "config.json").read_text())
        kw = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in src}
    out = export_bamba(lm, args.dir, **kw)
    for name in TOKENIZER_FILES:
        if (Path(args.model) / name).is_file():
            shutil.copy2(Path(args.model) / name, out / name)
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc` reports something the user can fix, printed as one line rather than a traceback.

    USER_ERRORS (ValueError covers a corrupt checkpoint and config errors; FloatingPointError a
    diverged run; UserError a busy output directory), YAML syntax errors, and a TypeError that
    transmamba's own code raised on purpose (a `raise` statement in the package, e.g. a config
    value of the wrong type); a TypeError raised anywhere else is a bug. KeyError is never one
    by itself: config lookups that can fail raise ValueError naming the key.
    """
    if isinstance(exc, USER_ERRORS):
        return True
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return True
    if isinstance(exc, TypeError):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None:
            return False
        filename = tb.tb_frame.f_code.co_filename
        package = os.path.dirname(os.path.abspath(__file__))
        return (os.path.abspath(filename).startswith(package + os.sep)
                and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise"))
    return False


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _dispatch(argv: list[str]) -> int:
    commands = ["bench", "env", "teacher", "export", *COMMANDS]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}; choose from {commands}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        _bench(rest)
    elif cmd == "env":
        return _env(rest)
    elif cmd == "teacher":
        return _teacher(rest)
    elif cmd == "export":
        return _export(rest)
    else:  # the subcommands return their summaries; success is exit status 0
        module, fn = COMMANDS[cmd]
        getattr(importlib.import_module(module), fn)(rest)
    return 0


def main(argv=None) -> int:
    """Run one subcommand; 0 on success, 2 for a user error (one `error:` line), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning  # restored when the block ends
        try:
            return _dispatch(argv)
        except KeyboardInterrupt:
            if debug:
                raise
            print("\ninterrupted", file=sys.stderr)
            return 130
        except Exception as e:
            if debug or not is_user_error(e):
                raise
            print(f"error: {str(e) or type(e).__name__}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
