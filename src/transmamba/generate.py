"""Text generation from a trained checkpoint:
`transmamba generate --checkpoint DIR --prompt "..." [--transpoint 64 | --schedule staggered]`.

DIR is a checkpoint directory or a run directory (its newest checkpoint is used). The tokenizer is
the one named in the checkpoint's config (data.tokenizer). TransPoints: `--transpoint P` puts the
switch at absolute position P in every layer, `--schedule SPEC` takes any schedule spec of
`transmamba.modules.schedule.make_schedule` (a name like "staggered" or a YAML dict like
"{name: fixed, P: 64}"); with neither, the model uses its own schedule's evaluation setting.
"""

from __future__ import annotations

import argparse
import sys

import torch

from transmamba import checkpoint as ckpt_lib
from transmamba.config import parse_value


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


@torch.no_grad()
def generate_text(model, tok, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int | None = None, transpoint: int | None = None, schedule=None,
                  device: str | torch.device = "cpu") -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, decoded to text.

    temperature <= 0 means greedy decoding (top_k = 1). An empty prompt starts from <|endoftext|>.
    """
    from transmamba.data.text import encode

    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ids = encode(tok, [prompt])[0] if prompt else []
    start = [] if ids else [_eot_id(tok)]
    idx = torch.tensor([start + ids], dtype=torch.long, device=device)
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None) or len(model.transpoints_for(1, None))
    tps = transpoints_from_args(n_layers, idx.shape[1] + max_new_tokens, transpoint, schedule)
    if temperature is None or temperature <= 0:
        temperature, top_k = 1.0, 1
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, transpoints=tps)
    return tok.decode(out[0, len(start):].tolist())


def generate_main(argv: list[str] | None = None) -> str:
    """`transmamba generate --checkpoint DIR --prompt TEXT [options]`; prints and returns the text."""
    p = argparse.ArgumentParser(prog="transmamba generate", allow_abbrev=False,
                                description="Sample text from a trained LM checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (newest checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start of a document)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--transpoint", type=int, help="switch attention -> SSM at this position in every layer")
    g.add_argument("--schedule", help="TransPoint schedule spec, e.g. staggered or '{name: fixed, P: 64}'")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="<= 0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer name")
    p.add_argument("--cache-dir", default=None, help="tokenizer cache (default: the checkpoint's data.cache_dir)")
    args = p.parse_args(argv)

    from transmamba.data.text import load_tokenizer
    from transmamba.train import pick_device

    path = ckpt_lib.resolve_checkpoint(args.checkpoint)
    cfg = ckpt_lib.read_config(path)
    data_cfg = cfg.get("data", {})
    tok_name = args.tokenizer or data_cfg.get("tokenizer")
    if tok_name is None:
        raise ValueError(f"checkpoint {path} names no tokenizer (data.tokenizer); pass --tokenizer")
    tok = load_tokenizer(tok_name, args.cache_dir or data_cfg.get("cache_dir", "cache/text"))
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = ckpt_lib.load_model(path, device=device)
    text = generate_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, transpoint=args.transpoint,
                         schedule=args.schedule, device=device)
    print(text)
    sys.stdout.flush()
    return text


if __name__ == "__main__":
    generate_main()
