"""Tiny random-init Hugging Face causal LMs, one per supported family (tests, `teacher check`, experiments).

Built from transformers' own config classes (no download): 2 layers, d=32, 4 query heads of 8 and
2 KV heads (gqa=False: 4), FFN 64, vocab 64 unless overridden. Each family's distinctive features
are switched on at a size where they matter for a 40-token sequence: sliding windows of 8, small
soft-caps, a query scale unlike head_dim, scaled RoPE types with a short original context.
Weights are drawn with std `init_std` (0.1, larger than HF's 0.02, so norms and caps are exercised).
"""

from __future__ import annotations

import torch

# name -> (model_type, config overrides); "llama-llama3" etc. are Llama variants
TINY_FAMILIES = {
    "llama": ("llama", {}),
    "llama-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
    "llama-dynamic": ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}),
    "llama-llama3": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 64}}),
    "llama-yarn": ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                 "original_max_position_embeddings": 64}}),
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "mistral": ("mistral", {"sliding_window": 8}),
    "qwen2": ("qwen2", {}),
    "qwen2-sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
    "qwen3": ("qwen3", {}),
    "gemma": ("gemma", {"hidden_act": "gelu_pytorch_tanh"}),
    "gemma2": ("gemma2", {"sliding_window": 8, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 2.0,
                          "final_logit_softcapping": 3.0, "layer_types": ["sliding_attention", "full_attention"]}),
    "gemma3": ("gemma3_text", {"sliding_window": 8, "query_pre_attn_scalar": 16,
                               "layer_types": ["sliding_attention", "full_attention"],
                               "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                   "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0,
                                                                      "factor": 2.0}}}),
    "phi3": ("phi3", {}),
    "phi3-window": ("phi3", {"sliding_window": 8}),
    "olmo2": ("olmo2", {}),
    "smollm3": ("smollm3", {"no_rope_layers": [1, 0]}),
}
CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
                  "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig",
                  "phi3": "Phi3Config", "olmo2": "Olmo2Config", "smollm3": "SmolLM3Config"}


def tiny_config(name: str, gqa: bool = True, **overrides):
    """The transformers config of tiny family `name` (a key of TINY_FAMILIES)."""
    import transformers

    if name not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {name!r}; choose from {sorted(TINY_FAMILIES)}")
    model_type, fam = TINY_FAMILIES[name]
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2 if gqa else 4, max_position_embeddings=256, rms_norm_eps=1e-5,
              tie_word_embeddings=model_type.startswith("gemma"), initializer_range=0.1,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type != "phi3" and model_type != "olmo2" and model_type != "qwen2" and model_type != "smollm3":
        kw["head_dim"] = 8
    if "rope_parameters" not in fam and model_type != "gemma3_text":
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    kw.update(fam)
    kw.update(overrides)
    return getattr(transformers, CONFIG_CLASSES[model_type])(**kw)


def tiny_teacher(name: str, gqa: bool = True, seed: int = 0, dtype=torch.float32, **overrides):
    """A random tiny causal LM of family `name`, eval mode, eager attention (the reference math)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(name, gqa, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    return model.eval()
