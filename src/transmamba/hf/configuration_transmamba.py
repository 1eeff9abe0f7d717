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

from dataclasses import field

from transformers import PretrainedConfig

from transmamba.models.lm import LMConfig

_DEFAULT = LMConfig(vocab_size=8192)
RENAMED = {"tie_embeddings": "tie_word_embeddings"}  # LMConfig name -> the name here


class TransMambaConfig(PretrainedConfig):
    model_type = "transmamba"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "num_key_value_heads": "n_kv_heads", "intermediate_size": "d_ff",
                     "max_position_embeddings": "max_seq_len", "rms_norm_eps": "norm_eps"}

    vocab_size: int = _DEFAULT.vocab_size
    d_model: int = _DEFAULT.d_model
    n_layers: int = _DEFAULT.n_layers
    arch: str = _DEFAULT.arch
    n_heads: int = _DEFAULT.n_heads
    n_kv_heads: int | None = _DEFAULT.n_kv_heads
    head_dim: int = _DEFAULT.head_dim
    d_ff: int | None = None
    balance_params: bool = _DEFAULT.balance_params
    d_state: int = _DEFAULT.d_state
    expand: int = _DEFAULT.expand
    d_conv: int = _DEFAULT.d_conv
    chunk_size: int = _DEFAULT.chunk_size
    hybrid_attn_every: int = _DEFAULT.hybrid_attn_every
    schedule: str | dict | int | None = _DEFAULT.schedule
    rope_theta: float = _DEFAULT.rope_theta
    switch_rope: bool = _DEFAULT.switch_rope
    conv_activation: str | None = _DEFAULT.conv_activation
    conv_init_identity: bool = _DEFAULT.conv_init_identity
    switch_gate_bias: bool = _DEFAULT.switch_gate_bias
    switch_options: dict = field(default_factory=dict)
    switch_layer_options: list = field(default_factory=list)
    pre_norms: bool = _DEFAULT.pre_norms
    post_norms: bool = _DEFAULT.post_norms
    mlp_act: str = _DEFAULT.mlp_act
    mlp_bias: bool = _DEFAULT.mlp_bias
    embed_scale: float = _DEFAULT.embed_scale
    final_softcap: float | None = _DEFAULT.final_softcap
    norm_eps: float = _DEFAULT.norm_eps
    tie_word_embeddings: bool = _DEFAULT.tie_embeddings
    init_std: float = _DEFAULT.init_std
    max_seq_len: int = _DEFAULT.max_seq_len
    extra: dict = field(default_factory=dict)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.to_lm_config()  # a bad value fails here, with LMConfig's ValueError

    def to_lm_config(self) -> LMConfig:
        """The LMConfig these fields describe (d_ff None is resolved as LMConfig does)."""
        from dataclasses import fields as dc_fields

        kw = {f.name: getattr(self, RENAMED.get(f.name, f.name)) for f in dc_fields(LMConfig)}
        return LMConfig(**kw)

    @classmethod
    def from_lm_config(cls, cfg: LMConfig, **kwargs) -> "TransMambaConfig":
        """The config of an LMConfig; kwargs: transformers fields (eos_token_id, ...)."""
        if not isinstance(cfg, LMConfig):
            raise ValueError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        d = cfg.to_dict()
        d = {RENAMED.get(k, k): v for k, v in d.items()}
        return cls(**d, **kwargs)
