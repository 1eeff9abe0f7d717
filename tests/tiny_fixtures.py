"""Tiny stand-ins for real data and models, shared by the tests (not part of the package).

- `tiny_llama`: a random 2-layer HF LlamaForCausalLM (d=32, GQA 4/2 heads of 8, vocab 64).
- `tiny_tokenizer`: a byte-level BPE trained here on a slice of the training works, with its own
  vocabulary (not SmolLM2's) and special tokens.
- `write_idx`: writes uint8 images/labels as (gzipped) IDX files, the Fashion-MNIST format that
  `transmamba.data.fashion_mnist` reads.

Import as `from tiny_fixtures import tiny_llama` (tests/ is on sys.path: its conftest.py sits in a
directory without __init__.py).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from transmamba.data.fashion_mnist import IMAGE_MAGIC, LABEL_MAGIC
from transmamba.io.files import set_hf_offline


def tiny_llama(seed: int = 0, **overrides):
    """A tiny random LlamaForCausalLM (2 layers, d=32, GQA 4/2 heads of 8, vocab 64), in eval mode;
    `overrides` are LlamaConfig fields."""
    set_hf_offline()
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
              tie_word_embeddings=False)
    kw.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def tiny_tokenizer(vocab_size: int = 320, eos: str = "</s>", bos: str | None = "<s>"):
    """A fast BPE tokenizer of `vocab_size` tokens trained on the first 300k characters of the
    training works; its specials are `eos` (and `bos`), so it has no <|endoftext|> unless asked."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from transmamba.data.text import split_texts

    specials = [t for t in (eos, bos) if t]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["\n".join(split_texts("train"))[:300_000]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, bos_token=bos)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = True) -> Path:
    """Write uint8 images "n r c" (IDX3) or labels "n" (IDX1), gzipped unless compress=False."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim == 3:
        header = struct.pack(">iiii", IMAGE_MAGIC, *a.shape)
    elif a.ndim == 1:
        header = struct.pack(">ii", LABEL_MAGIC, a.shape[0])
    else:
        raise ValueError(f"array must have shape (n, r, c) or (n,), got {a.shape}")
    raw = header + a.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def run_tiny_convert(tmp_path, teacher_dir, name, *extra, transpoints="[0, 16]"):
    """`transmamba convert` of a 2-layer d24 Switch student from a local teacher dir on 32-token
    windows with a budget of a few steps (the recipe tests' shared run)."""
    from transmamba.recipes.convert import convert_main

    cfg = tmp_path / "student.yaml"
    cfg.write_text("student: {n_layers: 2, d_model: 24, n_heads: 2, n_kv_heads: 1, d_ff: 32,"
                   " schedule: {name: staggered, period: 2, span: 32}}\n")
    argv = ["--teacher", str(teacher_dir), "--student", str(cfg), "--quiet", "--name", name,
            "--out_dir", str(tmp_path / "runs"), "--data.seq_len", "32", "--data.cache_windows", "4",
            "--data.calib_windows", "2", "--data.teacher_cache_dir", str(tmp_path / "tc"),
            "--train.tokens", "256", "--train.batch_size", "2", "--train.warmup_steps", "1",
            "--eval.batches", "1", "--eval.batch_size", "2", "--eval.transpoints", transpoints,
            "--eval.speed_context", "8", "--eval.speed_tokens", "2", "--eval.prompt_tokens", "2",
            "--eval.prompts", "['ROMEO:']", *extra]
    return convert_main(argv)


def save_tiny_vit(out, img_size: int, patch_size: int) -> Path:
    """A tiny RANDOM ViT (d 16, depth 2, 2 heads, MLP 32; seed 0) saved to `out`: a teacher whose
    weights' shapes, not values, are what the multimodal recipe tests need."""
    from transmamba.models.vit import ViT, ViTConfig, save_vit

    torch.manual_seed(0)
    save_vit(ViT(ViTConfig(img_size=img_size, patch_size=patch_size, d_model=16, depth=2, num_heads=2, d_ff=32)), out)
    return Path(out)
