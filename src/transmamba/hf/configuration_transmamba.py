"""`TransMambaConfig`: the Hugging Face config of every LM architecture `transmamba.models.lm` builds.

One field per `LMConfig` field, under the same name (Switch with any schedule, Mamba-2, hybrid,
Transformer, any other registered mixer kind as `arch`, and the options of the converted HF teacher
families: pre/post norms, q/k norm, soft-caps, per-layer Switch options ...), so `config.json` reads
like our own model config; the usual transformers names are aliases (`hidden_size` = d_model,
`num_hidden_layers` = n_layers, `num_attention_heads` = n_heads, `num_key_value_heads` = n_kv_heads,
`intermediate_size` = d_ff, `max_position_embeddings` = max_seq_len, `rms_norm_eps` = norm_eps), and
LMConfig's `tie_embeddings` is transformers' `tie_word_embeddings`.

`TransMambaConfig.from_lm_config(cfg)` / `config.to_lm_config()` convert both ways exactly (a test
checks that the fields cover LMConfig's, so a new LMConfig field cannot be forgotten here).
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields

from transformers import PretrainedConfig

from transmamba.models.lm import LMConfig

RENAMED = {"tie_embeddings": "tie_word_embeddings"}  # LMConfig name -> the name here


def _declare_lm_fields(namespace: dict) -> None:
    """Declare in a class body (`namespace`: its `locals()`) one field per LMConfig field, with
    LMConfig's type and default (a default_factory stays one), named as RENAMED says; transformers
    makes every annotated name of a config class body a dataclass field."""
    annotations = namespace.setdefault("__annotations__", {})
    for f in fields(LMConfig):
        name = RENAMED.get(f.name, f.name)
        annotations[name] = f.type
        namespace[name] = f.default if f.default_factory is MISSING else field(default_factory=f.default_factory)


class TransMambaConfig(PretrainedConfig):
    model_type = "transmamba"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "num_key_value_heads": "n_kv_heads", "intermediate_size": "d_ff",
                     "max_position_embeddings": "max_seq_len", "rms_norm_eps": "norm_eps"}

    _declare_lm_fields(locals())  # vocab_size ... extra, in LMConfig's order
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.to_lm_config()  # a bad value fails here, with LMConfig's ValueError

    def to_lm_config(self) -> LMConfig:
        """The LMConfig these fields describe (d_ff None is resolved as LMConfig does)."""
        kw = {f.name: getattr(self, RENAMED.get(f.name, f.name)) for f in fields(LMConfig)}
        return LMConfig(**kw)

    @classmethod
    def from_lm_config(cls, cfg: LMConfig, **kwargs) -> "TransMambaConfig":
        """The config of an LMConfig; kwargs: transformers fields (eos_token_id, ...)."""
        if not isinstance(cfg, LMConfig):
            raise ValueError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        d = cfg.to_dict()
        d = {RENAMED.get(k, k): v for k, v in d.items()}
        return cls(**d, **kwargs)
