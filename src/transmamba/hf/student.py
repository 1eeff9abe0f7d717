"""Language-model checkpoints: `load_model` rebuilds the LM a checkpoint holds, in either format.

- the Hugging Face format (`config.json` with `model_type: "transmamba"`, `model.safetensors`, the
  tokenizer files, and `checksums.json`, a sha256 manifest of them in `transmamba.io.checkpoint`'s
  scheme): what `transmamba convert` / `transmamba train` write for the final student (`save_hf`,
  atomically), loadable with `AutoModelForCausalLM.from_pretrained(dir)` after `import transmamba`,
  which checks it first (`TransMambaForCausalLM.from_pretrained`);
- our training-checkpoint format (`transmamba.io.checkpoint`: checksummed manifest, the run
  config with its "model" section), still read; `convert_to_hf(old, new)` rewrites one as the first.

The checkpoint file format lives in `transmamba.io.checkpoint`, a leaf that cannot import
`transmamba.models`; building the model from the checkpoint's config happens here, above both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from transmamba.io.checkpoint import MANIFEST_FILE, first_nonfinite, load_checkpoint, read_config, resolve_checkpoint
from transmamba.io.files import atomic_directory
from transmamba.io.model_dir import check_model_dir
from transmamba.models.lm import LM, LMConfig

LM_KEYS = ("vocab_size", "d_model", "n_layers")  # present in every saved LM config


def model_config_dict(config: dict) -> dict:
    """The LM config inside a run config (its "model" section), or the dict itself if it is one."""
    return config["model"] if isinstance(config.get("model"), dict) else config


def lm_config_from(config: dict, source: str | os.PathLike = "checkpoint") -> LMConfig:
    """The LMConfig in a run config (its "model" section, or the dict itself if it is one).

    Anything else (a vision student or ViT directory, a config without the LM's keys) raises
    ValueError saying what the checkpoint is instead.
    """
    hint = "use a checkpoint written by `transmamba train` or `transmamba convert`"
    if not isinstance(config, dict):
        raise ValueError(f"{source} is not a language-model checkpoint: config.json holds a "
                         f"{type(config).__name__}, not a mapping")
    fmt = config.get("format")
    if not isinstance(config.get("model"), dict):
        for key, what in (("student", "vision student"), ("vit", "ViT")):
            if isinstance(config.get(key), dict):
                raise ValueError(f"{source} is a {what} ({fmt or key!r}), not a language model; {hint}")
    cfg = model_config_dict(config)
    missing = [k for k in LM_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{source} is not a language-model checkpoint: its config.json has no LM "
                         f"'model' section (missing {', '.join(missing)}); {hint}")
    return LMConfig.from_dict(cfg)


HF_MODEL_TYPE = "transmamba"
RUN_INFO = "transmamba_run.json"  # beside a Hugging Face-format student: how it was made


def is_hf_dir(dir: str | os.PathLike) -> bool:
    """Whether `dir` holds a Hugging Face-format student (config.json with model_type "transmamba")."""
    f = Path(dir) / "config.json"
    if not f.is_file():
        return False
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") == HF_MODEL_TYPE


def load_model(dir: str | os.PathLike, device: str | torch.device = "cpu") -> LM:
    """Rebuild the LM from config.json and load its (checksum-verified) weights, in eval mode.

    `dir` may be a Hugging Face-format student directory (`save_hf`), a checkpoint dir, a
    checkpoints dir or a run dir (newest intact checkpoint). A student is checked before it is read
    (`TransMambaForCausalLM.from_pretrained`): no custom code, every file its checksums.json lists
    intact (a student written before checksums has none and loads unverified), weights exactly
    those config.json describes (no missing / unexpected tensor, no shape mismatch) and finite;
    each problem is a ValueError (FileNotFoundError for a missing file) naming the file and tensor.
    """
    if is_hf_dir(dir):  # from_pretrained checks it first: custom code, checksums, weights vs config, NaN
        from transmamba.hf import TransMambaForCausalLM

        return TransMambaForCausalLM.from_pretrained(str(dir)).model.to(device).eval()
    if (Path(dir) / "config.json").is_file() and not (Path(dir) / "state.json").is_file():
        check_model_dir(dir, weights=False)  # e.g. a student whose config.json no longer parses: named
    dir = resolve_checkpoint(dir)
    cfg = lm_config_from(read_config(dir, verify=False), f"checkpoint {dir}")
    model = LM(cfg)
    load_checkpoint(dir, model)
    return model.to(device).eval()


# what a student directory holds (save_hf writes them): replaced, not carried over, when it is rewritten
STUDENT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json", RUN_INFO,
                 MANIFEST_FILE)


def save_hf(lm: LM, dir: str | os.PathLike, tokenizer=None, run_info: dict | None = None, **config_kwargs) -> Path:
    """Write `lm` as a Hugging Face model directory: config.json (model_type "transmamba"),
    model.safetensors, generation_config.json, the tokenizer's files when one is given (its
    <|endoftext|> / eos token becomes eos_token_id unless config_kwargs say otherwise), run_info
    (how it was made: the run config, metrics) as transmamba_run.json, and last checksums.json (size
    and sha256 of every file, the scheme of `transmamba.io.checkpoint`), which `load_model` and
    `TransMambaForCausalLM.from_pretrained` verify.

    Written atomically: into a temporary sibling directory renamed onto `dir` at the end, so a crash
    leaves the previous student or the new one, never half of one. An existing student in `dir` is
    replaced; what else it held (e.g. an eval/ folder) is kept. A non-empty `dir` that is not a
    student is refused, as are weights holding NaN/Inf (named), before anything is written."""
    from transmamba.hf import TransMambaForCausalLM

    if tokenizer is not None:
        if len(tokenizer) > lm.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only {lm.cfg.vocab_size}")
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        config_kwargs.setdefault("eos_token_id", eos)
        config_kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
        config_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    dir = Path(dir)
    if dir.exists() and not dir.is_dir():
        raise NotADirectoryError(f"cannot write a student to {dir}: it is a file")
    if dir.is_dir() and any(dir.iterdir()) and not (is_hf_dir(dir) or (dir / MANIFEST_FILE).is_file()):
        raise FileExistsError(f"cannot write a student to {dir}: it is a non-empty directory that does not hold "
                              f"a transmamba student (refusing to replace it)")
    bad = first_nonfinite(list(lm.state_dict().items()))
    if bad is not None:
        raise ValueError(f"refusing to save the student to {dir}: tensor {bad!r} holds NaN/Inf values")
    model = TransMambaForCausalLM.from_lm(lm, **config_kwargs)
    # an old student's files are replaced; what else its directory held (e.g. eval/) is kept
    keep = lambda name: name not in STUDENT_FILES and not name.endswith(".safetensors")  # noqa: E731
    with atomic_directory(dir, replace=True, keep=keep, manifest=True) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if run_info is not None:
            (tmp / RUN_INFO).write_text(json.dumps(run_info, indent=2, default=str))
    return dir


def convert_to_hf(old: str | os.PathLike, new: str | os.PathLike, tokenizer="auto") -> Path:
    """Rewrite a checkpoint in our training format as a Hugging Face model directory.

    tokenizer: "auto" (the one the checkpoint's config names, data.tokenizer / data.cache_dir, if
    any), None (none) or a tokenizer object."""
    if is_hf_dir(old):
        raise ValueError(f"{old} is already a Hugging Face-format student")
    lm = load_model(old)
    if tokenizer == "auto":
        tokenizer = None
        cfg = read_config(resolve_checkpoint(old), verify=False)
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        if data.get("tokenizer"):
            from transmamba.data.text import load_tokenizer

            tokenizer = load_tokenizer(data["tokenizer"], data.get("cache_dir", "cache/text"))
    return save_hf(lm, new, tokenizer)
