"""`TransMambaForCausalLM`: our `LM` as a transformers `PreTrainedModel` + `GenerationMixin`.

    model = AutoModelForCausalLM.from_pretrained(dir)   # after `import transmamba`
    model.generate(ids, max_new_tokens=..., do_sample=..., temperature=..., top_k=..., top_p=...)

The weights are our `LM`'s under the prefix `model.` (`model.embed.weight`, `model.blocks.0.mixer...`);
`model.lm_head.weight` is tied to `model.embed.weight` when `tie_word_embeddings`, so
save_pretrained / from_pretrained round-trip. The forward is `LM.forward` exactly; decoding inside
`generate()` uses `TransMambaCache` (`transmamba.hf.cache`): the prompt through `LM.forward(...,
caches=)`, each new token through `LM.step`, the Switch layers converting their KV prefix into the
SSM state when they reach their TransPoint, as `LM.generate` does (greedy decoding gives the same
tokens). TransPoints: the schedule's evaluation setting for the total length (prompt +
max_new_tokens), or `generate(..., transpoints=[...])`.

attention_mask: left padding only (each row 0...0 1...1); each row then behaves as if alone
(`LM.forward(..., pad=)`). A mask with holes or right padding is refused (ValueError), as is
`inputs_embeds`; position_ids are ignored (positions follow the cache; RoPE is relative, so a
left-padded row needs no shift). Beam search reorders the cache rows; assisted decoding is refused
(the cache cannot be cropped).

`from_pretrained` checks a local directory before reading it (see its docstring): it never runs the
directory's code (a config with `auto_map` is refused by name), verifies the checksum manifest
`transmamba.hf.student.save_hf` writes, and refuses weights that do not match config.json or hold NaN.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from transmamba.hardware.precision import resolve_amp
from transmamba.hf.cache import TransMambaCache
from transmamba.hf.configuration_transmamba import TransMambaConfig
from transmamba.io.model_dir import check_model_dir, first_nonfinite_tensor, safetensors_tensors, weight_files
from transmamba.models.lm import LM


def pad_from_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Left-padding counts "b" from a 0/1 mask "b l" (None when nothing is padded).

    ValueError for a mask that is not 2-D of the input's length or not of the form 0..0 1..1.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError("attention_mask must be a 2-D 0/1 tensor (b, l); 4-D masks are not supported")
    m = attention_mask.to(torch.long)
    if m.numel() and not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1")
    if m.shape[1] != length:
        raise ValueError(f"attention_mask has length {m.shape[1]}, the input {length}")
    pad = (m == 0).sum(1)
    t = torch.arange(m.shape[1], device=m.device)
    if not bool((m == (t[None, :] >= pad[:, None]).long()).all()):
        raise ValueError("attention_mask must be left padding (each row 0...0 1...1): right padding or "
                         "holes inside a row are not supported (use tokenizer.padding_side = 'left')")
    return pad if bool((pad > 0).any()) else None


def check_weights(dir, config: TransMambaConfig) -> None:
    """ValueError naming the tensor and file when the safetensors weights of `dir` are not exactly
    the tensors `config` builds (missing, unexpected, another shape) or hold NaN/Inf."""
    with torch.device("meta"):  # the expected names and shapes, without allocating
        own = {f"model.{k}": t for k, t in LM(config.to_lm_config()).state_dict().items()}
    tied = set(TransMambaForCausalLM._tied_weights_keys) if config.tie_word_embeddings else set()
    saved = safetensors_tensors(dir)
    for k in tied - set(saved):  # save_pretrained stores a tied weight once
        own.pop(k, None)
    what = (f"config.json describes {config.num_hidden_layers} layers of d_model {config.hidden_size} "
            f"(vocabulary {config.vocab_size})")
    missing = [k for k in own if k not in saved]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{dir}: the weights lack tensor {missing[0]!r}{more}; {what}, which the weights "
                         f"({weight_files(dir)[0].name}) do not match")
    unexpected = [k for k in saved if k not in own]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"{dir}: {saved[unexpected[0]][1].name} holds tensor {unexpected[0]!r}{more} the model "
                         f"does not have; {what}, which the weights do not match")
    for k, t in own.items():
        shape, file = saved[k]
        if shape != tuple(t.shape):
            raise ValueError(f"{dir}: tensor {k!r} in {file.name} has shape {shape}, but {what}, which needs "
                             f"{tuple(t.shape)}")
    bad = first_nonfinite_tensor(dir)
    if bad is not None:
        name, file, n_nan, n_inf = bad
        raise ValueError(f"{dir}: tensor {name!r} in {file.name} holds {n_nan} NaN and {n_inf} Inf values; "
                         f"refusing to load a damaged model")


class TransMambaPreTrainedModel(PreTrainedModel):
    config_class = TransMambaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    def _init_weights(self, module):
        """Nothing: `LM.__init__` initialises its own weights (and from_pretrained loads every one)."""


class TransMambaForCausalLM(TransMambaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: TransMambaConfig):
        super().__init__(config)
        self.model = LM(config.to_lm_config())
        if not config.tie_word_embeddings:
            self._tied_weights_keys = {}
        self.post_init()
        if self.model.embed.weight.dtype == torch.bfloat16:  # from_pretrained(dtype=torch.bfloat16)
            resolve_amp("bf16", self.model.embed.weight.device, what="a TransMamba model in bfloat16")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' from_pretrained, with a local directory checked first (nothing read into
        the model before): no custom code (`auto_map`, ...) and no pickle weights
        (`transmamba.io.model_dir`), every file its checksums.json lists intact, and the weights
        exactly what config.json describes -- no tensor missing or unexpected, no shape mismatch,
        no NaN/Inf -- each refused by a ValueError naming the file and tensor. trust_remote_code
        is always False."""
        if kwargs.get("trust_remote_code"):
            raise ValueError("TransMambaForCausalLM.from_pretrained refuses trust_remote_code=True: "
                             "transmamba never runs model code")
        kwargs["trust_remote_code"] = False
        path = pretrained_model_name_or_path
        if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
            check_model_dir(path)
            config = kwargs.get("config")
            if not isinstance(config, TransMambaConfig):
                config = TransMambaConfig.from_pretrained(path)
            check_weights(path, config)
        return super().from_pretrained(path, *model_args, **kwargs)

    @classmethod
    def from_lm(cls, lm: LM, **config_kwargs) -> "TransMambaForCausalLM":
        """Wrap an existing LM (its weights are shared, not copied); config_kwargs: eos_token_id, ..."""
        if not isinstance(lm, LM):
            raise ValueError(f"lm must be a transmamba LM, got {type(lm).__name__}")
        model = cls(TransMambaConfig.from_lm_config(lm.cfg, **config_kwargs))
        model.model = lm
        return model.to(next(lm.parameters()).dtype).train(lm.training)

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    # ------------------------------------------------------------------ generate's hooks
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        transpoints = model_kwargs.pop("transpoints", None)
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        model_kwargs["cache"] = TransMambaCache(self.model, transpoints, max_len=generation_config.max_length)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: TransMambaCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, transpoints=None, past_key_values=None, **kwargs):
        """LM.forward on input_ids "b l" -> CausalLMOutputWithPast(logits "b l V", loss with labels
        (shifted inside, -100 ignored), cache). With a TransMambaCache (generate), input_ids continue
        after the tokens it has seen. transpoints: per-layer list or int (no cache)."""
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by TransMambaForCausalLM: pass input_ids")
        if input_ids is None:
            raise ValueError("input_ids is required")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, TransMambaCache):
            raise ValueError(f"cache must be a TransMambaCache, got {type(cache).__name__}")
        if cache is None and use_cache is True and labels is None:
            cache = TransMambaCache(self.model, transpoints)
        L = input_ids.shape[1]
        lm = self.model
        hidden = None
        if cache is None:
            pad = pad_from_mask(attention_mask, L)
            out = lm(input_ids, transpoints=transpoints, return_hidden=bool(output_hidden_states), pad=pad)
            logits = out[0]
            hidden = tuple(out[2]) if output_hidden_states else None
        else:
            if transpoints is not None:
                raise ValueError("transpoints go to the TransMambaCache (or generate(transpoints=...)), "
                                 "not to a forward with a cache")
            seen = cache.seen
            total = seen + L
            mask = attention_mask
            if mask is not None and mask.shape[1] == total and seen > 0:
                if not bool((mask[:, seen:] == 1).all()):
                    raise ValueError("attention_mask: the new tokens of a cached forward must not be padding")
                mask = None
            elif mask is not None and seen > 0:
                raise ValueError(f"attention_mask has length {mask.shape[1]}, expected {total} (cache + new)")
            pad = pad_from_mask(mask, L) if seen == 0 else None
            caches = cache.ensure(input_ids.shape[0], input_ids.device, lm.embed.weight.dtype, pad)
            if L == 1 and seen > 0:
                logits = lm.step(input_ids[:, 0], caches)[:, None]
            else:
                logits = lm(input_ids, caches=caches)[0]
            cache.seen = total
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        loss = None
        if labels is not None:
            z = logits[:, :-1].flatten(0, 1)
            z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # as LM.forward
            loss = F.cross_entropy(z, labels[:, 1:].flatten().to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache, hidden_states=hidden)
