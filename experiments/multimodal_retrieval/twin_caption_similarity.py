"""How alike the frozen MiniLM makes a twin-clip caption and its twin's (the same words, the two
motions exchanged): cosine of the mean-pooled sentence vectors, against random caption pairs.

    python experiments/multimodal_retrieval/twin_caption_similarity.py [N_PAIRS=200]

The dual encoder's text side and cross-Mamba's "modulate" mode both start from the mean of the
caption's token features; "prefix" mode scans the tokens in order."""

import random
import sys

import torch

from transmamba.data.twin_clips import twin_caption
from transmamba.models.text_encoder import encode_texts, load_minilm

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
rng = random.Random(0)
texts = []
for _ in range(n):
    a, b = sorted(rng.sample(range(10), 2))
    da, db = rng.sample(range(8), 2)
    texts += [twin_caption((a, da, b, db)), twin_caption((a, db, b, da))]
model, tok = load_minilm()
_, _, pooled = encode_texts(texts, model, tok)
p = torch.nn.functional.normalize(pooled.float(), dim=-1)
twin = (p[0::2] * p[1::2]).sum(-1)
same = torch.tensor([[x == y for y in texts] for x in texts])
off = (p @ p.T)[~same]  # pairs of different captions
print(f"{n} twin pairs, e.g. {texts[0]!r} / {texts[1]!r}")
print(f"| pooled MiniLM cosine | mean | min | max |\n|---|---|---|---|")
print(f"| caption vs its twin | {twin.mean():.4f} | {twin.min():.4f} | {twin.max():.4f} |")
print(f"| any two different captions | {off.mean():.4f} | {off.min():.4f} | {off.max():.4f} |")
