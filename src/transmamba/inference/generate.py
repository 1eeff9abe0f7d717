"""Text generation from a trained checkpoint:
`transmamba generate --checkpoint DIR --prompt "..." [--transpoint 64 | --schedule staggered]`.

DIR is a Hugging Face-format student (what `transmamba convert` / `train` write as <out>/student,
with its tokenizer), a checkpoint directory or a run directory (its newest intact checkpoint is used); it must
hold a language model (`transmamba train` / `transmamba convert`): a vision student or a directory
without the LM config keys is refused, saying so. The tokenizer is the one named in the
checkpoint's config (data.tokenizer); one with more tokens than the model's vocabulary is refused.
TransPoints: `--transpoint P` puts the switch at absolute position P in every layer, `--schedule
SPEC` takes any schedule spec of `transmamba.modules.schedule.make_schedule` (a name like
"staggered" or a YAML dict like "{name: fixed, P: 64}"); with neither, the model uses its own
schedule's evaluation setting. Tokens are printed to stdout as they are produced.

Context length: the LM has no hard cap. RoPE angles are computed for any position, the SSM state
has a fixed size and the decoding caches are sized per call, so `--max-new-tokens` is only
refused below 1. `max_seq_len` in the model config is the training length; going past it is
allowed with a warning (the model has not seen such positions, quality may drop).
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Callable

import torch

from transmamba.config import parse_value
from transmamba.io import checkpoint as ckpt_lib
from transmamba.io.model_dir import refuse_custom_code
from transmamba.hf.student import lm_config_from, load_model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def transpoints_from_args(n_layers: int, total_len: int, transpoint: int | None = None,
                          schedule: str | dict | None = None) -> list[int] | None:
    """Per-layer TransPoints for a sequence of total_len tokens from --transpoint / --schedule (None: model's own)."""
    from transmamba.modules.schedule import make_schedule

    if transpoint is not None and schedule is not None:
        raise ValueError("give --transpoint or --schedule, not both")
    if transpoint is not None:
        if transpoint < 0:
            raise ValueError(f"--transpoint must be >= 0, got {transpoint}")
        return make_schedule(int(transpoint)).transpoints(n_layers, total_len, None)
    if schedule is not None:
        spec = parse_value(schedule) if isinstance(schedule, str) else schedule
        return make_schedule(spec).transpoints(n_layers, total_len, None)
    return None


def _eot_id(tok) -> int:
    from transmamba.data.text import EOT

    return int(tok.convert_tokens_to_ids(EOT))


def check_sampling(max_new_tokens, temperature, top_k) -> None:
    """ValueError naming the option for a token count < 1, a NaN/Inf/negative temperature or a top-k < 1."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"--temperature must be a number, got {temperature!r}")
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"--top-k must be a whole number >= 1 (or left out: no top-k), got {top_k!r}")


def check_tokenizer(tok, vocab_size: int, source: str = "the model") -> None:
    """ValueError when the tokenizer can produce ids the model has no embedding for."""
    n = len(tok)
    if n > vocab_size:
        raise ValueError(f"the tokenizer has {n} tokens but {source} only {vocab_size} (model.vocab_size): "
                         f"it is not the tokenizer this model was trained with (see --tokenizer)")


class _Detokenizer:
    """Turns a growing token list into text pieces for a streamer, never splitting a character.

    A piece is held back while the decoded text ends in an incomplete UTF-8 sequence (U+FFFD);
    after `window` tokens decoding restarts from the last token (kept as context), so the cost
    per token stays bounded.
    """

    def __init__(self, tok, emit: Callable[[str], None], window: int = 32):
        self.tok, self.emit, self.window = tok, emit, window
        self.ids: list[int] = []
        self.sent = 0

    def push(self, ids: list[int]) -> None:
        self.ids += ids
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.emit(text[self.sent:])
        if len(self.ids) >= self.window:
            self.ids = self.ids[-1:]
            text = self.tok.decode(self.ids)
        self.sent = len(text)

    def close(self) -> None:
        text = self.tok.decode(self.ids)
        if len(text) > self.sent:
            self.emit(text[self.sent:])
        self.ids, self.sent = [], 0


@torch.no_grad()
def generate_text(model, tok, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int | None = None, transpoint: int | None = None, schedule=None,
                  device: str | torch.device = "cpu", streamer: Callable[[str], None] | None = None,
                  amp: str = "none") -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, decoded to text.

    temperature 0 means greedy decoding; NaN, Inf or negative temperatures, top_k < 1 and
    max_new_tokens < 1 raise ValueError. An empty prompt starts from <|endoftext|>. `streamer`, if
    given, is called with successive pieces of the returned text as tokens are produced (the
    decoded prompt first); their concatenation is the returned text. `amp` (auto | none | bf16) is
    the precision of the model's matmuls (`transmamba.hardware.precision`).
    """
    from transmamba.data.text import encode
    from transmamba.hardware.precision import autocast

    check_sampling(max_new_tokens, temperature, top_k)
    cfg = getattr(model, "cfg", None)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is not None and hasattr(tok, "__len__"):
        check_tokenizer(tok, int(vocab))
    ids = encode(tok, [prompt])[0] if prompt else []
    start = [] if ids else [_eot_id(tok)]
    idx = torch.tensor([start + ids], dtype=torch.long, device=device)
    total = idx.shape[1] + max_new_tokens
    trained = getattr(cfg, "max_seq_len", None)
    if trained is not None and total > int(trained):
        warnings.warn(f"generating {total} tokens (prompt {idx.shape[1]} + {max_new_tokens} new) goes past the "
                      f"model's training length max_seq_len={trained}; quality may drop beyond it")
    n_layers = getattr(cfg, "n_layers", None) or len(model.transpoints_for(1, None))
    tps = transpoints_from_args(n_layers, total, transpoint, schedule)
    temperature = 0.0 if temperature is None else float(temperature)
    out = list(ids)
    with autocast(device, amp):
        if hasattr(model, "decode"):
            detok = _Detokenizer(tok, streamer) if streamer is not None else None
            if detok is not None and ids:
                detok.push(list(ids))
            for nxt in model.decode(idx, max_new_tokens, temperature=temperature, top_k=top_k, transpoints=tps):
                t = int(nxt[0])
                out.append(t)
                if detok is not None:
                    detok.push([t])
            if detok is not None:
                detok.close()
        else:  # a model with only `generate` (no cached step API): the text comes at the end
            res = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, transpoints=tps)
            out = res[0, len(start):].tolist()
            if streamer is not None:
                streamer(tok.decode(out))
    return tok.decode(out)


def generate_main(argv: list[str] | None = None) -> str:
    """`transmamba generate --checkpoint DIR --prompt TEXT [options]`; streams and returns the text."""
    p = argparse.ArgumentParser(prog="transmamba generate", allow_abbrev=False,
                                description="Sample text from a trained LM checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (newest checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start of a document)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--transpoint", type=int, help="switch attention -> SSM at this position in every layer")
    g.add_argument("--schedule", help="TransPoint schedule spec, e.g. staggered or '{name: fixed, P: 64}'")
    p.add_argument("--max-new-tokens", type=int, default=200, help=">= 1 (the LM has no hard context cap)")
    p.add_argument("--temperature", type=float, default=0.8, help="a finite number >= 0; 0: greedy")
    p.add_argument("--top-k", type=int, default=None, help=">= 1; default: sample from every token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"],
                   help="auto: bf16 autocast where this device runs it fast (transmamba env), else fp32")
    p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer name")
    p.add_argument("--cache-dir", default=None, help="tokenizer cache (default: the checkpoint's data.cache_dir)")
    args = p.parse_args(argv)
    check_sampling(args.max_new_tokens, args.temperature, args.top_k)

    from transmamba.data.text import load_tokenizer
    from transmamba.hf.student import is_hf_dir

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if (Path(args.checkpoint) / "config.json").is_file():
        refuse_custom_code(args.checkpoint)  # before anything reads the directory
    if is_hf_dir(args.checkpoint):  # a Hugging Face-format student: its own tokenizer unless --tokenizer
        from transformers import AutoTokenizer

        if not args.tokenizer and not any((Path(args.checkpoint) / f).is_file() for f in TOKENIZER_FILES):
            raise ValueError(f"{args.checkpoint} holds no tokenizer ({' / '.join(TOKENIZER_FILES)}); "
                             f"pass --tokenizer NAME")
        torch.manual_seed(args.seed)
        model = load_model(args.checkpoint, device=device)  # verified: checksums, weights vs config, NaN
        tok = (load_tokenizer(args.tokenizer, args.cache_dir or "cache/text") if args.tokenizer
               else AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=False))
        check_tokenizer(tok, model.cfg.vocab_size, f"the model in {args.checkpoint}")
        text = generate_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, transpoint=args.transpoint,
                             schedule=args.schedule, device=device, amp=args.amp,
                             streamer=lambda piece: print(piece, end="", flush=True))
        print(flush=True)
        return text
    path = ckpt_lib.resolve_checkpoint(args.checkpoint)
    lm_config_from(ckpt_lib.read_config(path, verify=False), f"checkpoint {path}")  # is it an LM at all?
    cfg = ckpt_lib.read_config(path)  # verified against the checkpoint's checksums
    lm_cfg = lm_config_from(cfg, f"checkpoint {path}")
    data_cfg = cfg.get("data", {}) if isinstance(cfg.get("data"), dict) else {}
    tok_name = args.tokenizer or data_cfg.get("tokenizer")
    if tok_name is None:
        raise ValueError(f"checkpoint {path} names no tokenizer (data.tokenizer); pass --tokenizer")
    tok = load_tokenizer(tok_name, args.cache_dir or data_cfg.get("cache_dir", "cache/text"))
    check_tokenizer(tok, lm_cfg.vocab_size, f"the model in {path}")
    torch.manual_seed(args.seed)
    model = load_model(path, device=device)

    def emit(piece: str) -> None:
        print(piece, end="", flush=True)

    text = generate_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, transpoint=args.transpoint,
                         schedule=args.schedule, device=device, streamer=emit, amp=args.amp)
    print(flush=True)
    return text


if __name__ == "__main__":
    generate_main()
