"""`transmamba teacher sample --tokens N`: the teacher writes its own corpus (the data-free option).

Samples are drawn with transformers' `generate(do_sample=True, top_p, temperature, use_cache=True)`
on the HF teacher, in batches of B prompts (left-padded, with an attention mask, so the KV cache
serves every row). One batch is one shard, `shard-{i:05d}.jsonl`, one document per sample:
`{"text", "prompt", "n_tokens"}` where text = prompt + continuation (decoded, cut at the first
EOS, special tokens dropped) and n_tokens counts the prompt and continuation tokens (no padding,
no EOS).

Determinism: shard i's sampling RNG is seeded with `shard_seed(seed, i)` (a hash of both), and
its prompts are drawn from `PROMPTS` (generic openings after the tokenizer's BOS) by the same
hash, so shard i depends only on (teacher, tokenizer, settings, seed, i). A run killed after k
shards and started again regenerates nothing it kept and then writes exactly the shards an
uninterrupted run writes (tested byte for byte). `--tokens` only decides how many shards there
are: a later run with a larger N extends the corpus, one with a smaller N finds it complete.

Each shard is written atomically (`io.files.atomic_write`), then the manifest (`manifest.json`:
teacher name and weight hash, tokenizer key, the sampling settings, each shard's file, samples,
tokens and sha1) is rewritten atomically. On start, the shards the manifest lists are verified
(sha1); from the first missing or altered one on, shards are sampled again. A corpus sampled with
other settings (or another teacher / tokenizer) is refused naming the setting, before any work;
give another `--out`.

The corpus is read as a data source by `data/sources.py` (`{"teacher_samples": DIR}`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from transmamba.data.teacher_samples import FORMAT, MANIFEST, read_manifest
from transmamba.io.files import atomic_write_bytes, save_json_atomic

# generic openings (the empty one = the tokenizer's BOS alone); each sample starts from one of them
PROMPTS = ("", "The", "In", "Once upon a time,", "Here is", "A", "I think", "It was", "This is", "When",
           "There are", "Question:", "def ", "Dear", "The following", "We", "According to", "1.", "Today",
           "Chapter 1")
SETTINGS = ("batch_size", "top_p", "temperature", "max_new_tokens", "seed")


def shard_seed(seed: int, index: int) -> int:
    """The RNG seed of shard `index` of a corpus sampled with `seed` (63 bits of sha256)."""
    return int.from_bytes(hashlib.sha256(f"transmamba-sample:{seed}:{index}".encode()).digest()[:8], "big") >> 1


def shard_prompts(seed: int, index: int, batch_size: int) -> list[str]:
    """The openings of shard `index`'s samples (deterministic in seed, index and row)."""
    out = []
    for row in range(batch_size):
        h = hashlib.sha256(f"transmamba-prompt:{seed}:{index}:{row}".encode()).digest()
        out.append(PROMPTS[int.from_bytes(h[:4], "big") % len(PROMPTS)])
    return out


def teacher_hash(model) -> str:
    """A short hash of the teacher's weights (every parameter and buffer's bytes, in state-dict order)."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(f"\0{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_settings(tokens, batch_size, top_p, temperature, max_new_tokens, seed) -> None:
    """ValueError naming the first bad sampling argument."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not (is_int(tokens) and tokens >= 1):
        raise ValueError(f"--tokens must be an integer >= 1, got {tokens!r}")
    if not (is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    if not (is_int(max_new_tokens) and max_new_tokens >= 1):
        raise ValueError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"--top-p must be in (0, 1], got {top_p!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature < float("inf")):
        raise ValueError(f"--temperature must be a finite number > 0, got {temperature!r}")
    if not is_int(seed):
        raise ValueError(f"--seed must be an integer, got {seed!r}")


def _prompt_ids(tok, prompts: list[str]) -> list[list[int]]:
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    out = []
    for p in prompts:
        ids = bos + (tok(p, add_special_tokens=False)["input_ids"] if p else [])
        if not ids:  # no BOS and an empty opening: start from the EOS (a document boundary)
            ids = [tok.eos_token_id]
        out.append(ids)
    return out


@torch.no_grad()
def sample_shard(model, tok, index: int, *, batch_size: int, top_p: float, temperature: float,
                 max_new_tokens: int, seed: int) -> list[dict]:
    """The samples of shard `index`: [{"text", "prompt", "n_tokens"}] (see the module docstring)."""
    prompts = shard_prompts(seed, index, batch_size)
    ids = _prompt_ids(tok, prompts)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shard_seed(seed, index))
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, top_p=float(top_p),
                             top_k=0, temperature=float(temperature), max_new_tokens=max_new_tokens,
                             min_new_tokens=0, use_cache=True, pad_token_id=pad, eos_token_id=eos)
    samples = []
    for row, prompt in enumerate(prompts):
        gen = out[row, width:].tolist()
        if eos is not None and eos in gen:
            gen = gen[:gen.index(eos)]
        full = ids[row] + gen
        text = tok.decode(full, skip_special_tokens=True)
        n = sum(1 for t in full if t not in tok.all_special_ids)
        samples.append({"text": text, "prompt": prompt, "n_tokens": n})
    return samples


def _shard_bytes(samples: list[dict]) -> bytes:
    return "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples).encode("utf-8")


def _intact_shards(out: Path, manifest: dict) -> list[dict]:
    """The longest prefix of the manifest's shards whose files exist with their recorded sha1."""
    kept = []
    for i, sh in enumerate(manifest["shards"]):
        p = out / sh["file"]
        if sh.get("index") != i or not p.is_file() or hashlib.sha1(p.read_bytes()).hexdigest() != sh["sha1"]:
            break
        kept.append(sh)
    return kept


def sample_corpus(model, tok, out: str | os.PathLike, *, tokens: int, teacher_name: str, batch_size: int = 8,
                  top_p: float = 0.95, temperature: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                  max_shards: int | None = None, progress: bool = True) -> dict:
    """Sample until the corpus in `out` holds >= `tokens` tokens (resuming / reusing what is there);
    returns the manifest. `max_shards` stops after that many shards in total (to simulate a kill)."""
    from transmamba.data.text import tokenizer_key

    check_settings(tokens, batch_size, top_p, temperature, max_new_tokens, seed)
    if tok is None:
        raise ValueError(f"teacher {teacher_name!r} has no tokenizer; it cannot write a text corpus")
    if tok.eos_token_id is None and tok.bos_token_id is None:
        raise ValueError(f"the tokenizer of teacher {teacher_name!r} has neither a BOS nor an EOS token to start "
                         f"samples from")
    out = Path(out)
    settings = {"batch_size": batch_size, "top_p": float(top_p), "temperature": float(temperature),
                "max_new_tokens": max_new_tokens, "seed": seed}
    ident = {"teacher": teacher_name, "teacher_hash": teacher_hash(model), "tokenizer": tokenizer_key(tok)}
    manifest = read_manifest(out)
    if manifest is not None:
        for k, v in {**ident, **settings}.items():
            have = manifest.get(k, manifest.get("settings", {}).get(k))
            if k == "teacher":
                continue  # the name may differ (a path vs. "smollm2"); the weight hash decides
            if have != v:
                raise ValueError(f"{out} holds teacher samples made with {k}={have!r}, this run asks {k}={v!r}; "
                                 f"give another --out (nothing was written)")
        shards = _intact_shards(out, manifest)
    else:
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} exists and is not a teacher-samples corpus (no {MANIFEST}); give another --out")
        shards = []
    manifest = {"format": FORMAT, **ident, "settings": settings, "shards": shards}

    def total():
        return sum(s["tokens"] for s in manifest["shards"])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tokens, initial=min(total(), tokens), unit="tok", desc="teacher sample", dynamic_ncols=True)
    t0, new_tokens = time.perf_counter(), 0
    try:
        while total() < tokens and (max_shards is None or len(manifest["shards"]) < max_shards):
            i = len(manifest["shards"])
            samples = sample_shard(model, tok, i, **settings)
            data = _shard_bytes(samples)
            name = f"shard-{i:05d}.jsonl"
            atomic_write_bytes(out / name, data)
            n = sum(s["n_tokens"] for s in samples)
            manifest["shards"].append({"index": i, "file": name, "samples": len(samples), "tokens": n,
                                       "sha1": hashlib.sha1(data).hexdigest()})
            save_json_atomic(manifest, out / MANIFEST)
            new_tokens += n
            if bar is not None:
                bar.update(min(n, max(0, tokens - bar.n)))
    finally:
        if bar is not None:
            bar.close()
    if not manifest["shards"]:
        save_json_atomic(manifest, out / MANIFEST)
    secs = time.perf_counter() - t0
    manifest["tokens"] = total()
    manifest["run"] = {"new_tokens": new_tokens, "seconds": secs,
                       "tokens_per_s": new_tokens / secs if secs > 0 and new_tokens else None}
    return manifest


def sample_main(args) -> dict:
    """`transmamba teacher sample` (args from cli.py's parser)."""
    from transmamba.teachers.families import inspect_teacher
    from transmamba.teachers.load import load_teacher

    check_settings(args.tokens, args.batch_size, args.top_p, args.temperature, args.max_new_tokens, args.seed)
    name = "smollm2" if args.teacher == "smollm2" else Path(args.teacher).name
    out = Path(args.out) if args.out else Path("cache/teacher_samples") / name
    model, tok = load_teacher(args.teacher, check=inspect_teacher)
    m = sample_corpus(model, tok, out, tokens=args.tokens, teacher_name=str(args.teacher),
                      batch_size=args.batch_size, top_p=args.top_p, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.quiet)
    rate = m["run"]["tokens_per_s"]
    print(f"{out}: {m['tokens']} tokens in {len(m['shards'])} shards"
          + (f" ({m['run']['new_tokens']} new, {rate:.1f} tok/s)" if rate else " (reused)"))
    return m
