"""A small Qwen3 teacher trained here with its own tokenizer, for the any-teacher study.

No pretrained causal LM other than SmolLM2 ships offline (shared/DATA.md), so this makes one whose
tokenizer and family are not SmolLM2's: a byte-level BPE of 4096 tokens trained on the Shakespeare
training works (specials <s> and </s>; no <|endoftext|>), and a 4-layer Qwen3 (d 256, 4 query / 2
KV heads of 64 with q/k RMSNorm, FFN 768, tied embeddings, 3.2M parameters) trained on the same
works for --steps AdamW steps of 8 x 256 tokens. It is a small, weak teacher, trained here: what
the study shows is that the pipeline runs on a teacher's own tokenizer, not teacher quality.

    .venv/bin/python experiments/any_teacher/make_teacher.py OUT [--steps 200] [--seed 0]
"""

import argparse
import math
import time

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from transmamba.data.text import batches, split_texts, token_ids


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=["</s>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(split_texts("train"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", bos_token="<s>")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    tok = train_tokenizer(4096)
    ids = token_ids("train", tok, "cache/text")
    config = Qwen3Config(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id)
    model = Qwen3ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches(ids, 8, 256, seed=args.seed, n_batches=args.steps)):
        lr = 3e-3 * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval().save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{len(tok)}-token tokenizer, final train loss {np.exp(loss.item()):.1f} ppl")


if __name__ == "__main__":
    main()
