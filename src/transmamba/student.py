"""Language-model checkpoints: `load_model` rebuilds the LM a checkpoint holds.

The checkpoint file format lives in `transmamba.io.checkpoint`, a leaf that cannot import
`transmamba.models`; building the model from the checkpoint's config happens here, above both.
"""

from __future__ import annotations

import os
import torch

from transmamba.io.checkpoint import load_checkpoint, model_config_dict, read_config, resolve_checkpoint
from transmamba.models.lm import LM, LMConfig

LM_KEYS = ("vocab_size", "d_model", "n_layers")  # present in every saved LM config


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


def load_model(dir: str | os.PathLike, device: str | torch.device = "cpu") -> LM:
    """Rebuild the LM from config.json and load its (checksum-verified) weights, in eval mode.

    `dir` may be a checkpoint dir, a checkpoints dir or a run dir (newest intact checkpoint).
    """
    dir = resolve_checkpoint(dir)
    cfg = lm_config_from(read_config(dir, verify=False), f"checkpoint {dir}")
    model = LM(cfg)
    load_checkpoint(dir, model)
    return model.to(device).eval()
