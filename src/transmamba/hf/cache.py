"""`TransMambaCache`: the transformers `Cache` that `TransMambaForCausalLM.generate` decodes with.

It holds our own per-layer decoding caches (`transmamba.modules.cache`), made by
`LM.allocate_caches`, so decoding inside `generate()` runs exactly `LM.forward(..., caches=)` for
the prompt and `LM.step` per token:

- a TransMamba-Switch layer keeps the KV prefix (RoPE'd keys, values, dt) before its TransPoint P;
  the step that reaches P converts it with the Memory converter into the SSM state and frees it,
  so once every layer has crossed P the cache no longer grows (`nbytes()` is constant); with
  head-level TransPoints each group of KV heads does so at its own P (kept heads keep their K/V);
- a Mamba-2 layer keeps its conv and SSM state; an attention layer its growing KV cache.

The TransPoints are chosen when the cache is made (the schedule's evaluation setting for the
total length `max_len`, as `LM.generate` does); the per-layer caches are allocated at the first
forward, when the batch is known. With left padding (`pad`: pad tokens per row), each row's
TransPoints are shifted by its padding, so each row decodes as if alone.
Beam search reorders rows (`reorder_cache`); rolling back tokens (`crop`, assisted decoding) is
refused: the SSM state cannot be cropped.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import torch
from transformers.cache_utils import Cache


def _map_tensors(obj, fn):
    """Apply fn to every tensor field of one of our dataclass caches, in place (and to the caches
    it holds in a list field: a Switch layer's head groups with head-level TransPoints)."""
    for f in fields(obj):
        t = getattr(obj, f.name)
        if isinstance(t, torch.Tensor):
            setattr(obj, f.name, fn(t))
        elif isinstance(t, list):
            for sub in t:
                if is_dataclass(sub):
                    _map_tensors(sub, fn)


class TransMambaCache(Cache):
    is_compileable = False

    def __init__(self, lm, transpoints: list[int] | None = None, max_len: int | None = None):
        super().__init__(layers=[])
        self.lm = lm
        self.n_layers = lm.cfg.n_layers
        self.max_len = max_len
        if isinstance(transpoints, int):
            transpoints = [transpoints] * self.n_layers
        self.transpoints = None if transpoints is None else list(transpoints)  # None: the schedule's
        self.caches: list | None = None
        self.seen = 0  # tokens consumed (including left padding)

    # ------------------------------------------------------------------ ours
    def ensure(self, batch: int, device, dtype, pad: torch.Tensor | None = None) -> list:
        """The per-layer caches, allocated on first use for this batch (pad: "b" left padding)."""
        if self.caches is None:
            self.caches = self.lm.allocate_caches(batch, self.max_len, self.transpoints, device=device, dtype=dtype,
                                                  pad=pad)
        elif self.caches and self.caches[0].batch != batch:
            raise ValueError(f"this TransMambaCache holds batch {self.caches[0].batch}, got inputs of batch {batch}")
        return self.caches

    def nbytes(self) -> int:
        """Bytes held by every layer's cache tensors."""
        if not self.caches:
            return 0
        total = 0
        for c in self.caches:
            if hasattr(c, "nbytes"):
                total += c.nbytes()
            else:
                total += sum(getattr(c, f.name).numel() * getattr(c, f.name).element_size() for f in fields(c)
                             if isinstance(getattr(c, f.name), torch.Tensor))
        return total

    # ------------------------------------------------------------------ the Cache interface generate uses
    def __len__(self):
        return self.n_layers

    def __repr__(self):
        return f"TransMambaCache(layers={self.n_layers}, transpoints={self.transpoints}, seen={self.seen})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.seen

    @property
    def batch_size(self) -> int:
        return self.caches[0].batch if self.caches else -1

    @property
    def is_initialized(self) -> bool:
        return self.caches is not None

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self.n_layers

    @property
    def is_linear(self) -> list[bool]:
        return [False] * self.n_layers  # Switch layers hold a KV cache before their TransPoint

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * self.n_layers

    def reset(self):
        self.caches, self.seen = None, 0

    def _rows(self, fn):
        for c in self.caches or []:
            if is_dataclass(c):
                _map_tensors(c, fn)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        self._rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor):
        self._rows(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int):
        self._rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("a TransMambaCache cannot be cropped (the SSM state past a TransPoint cannot be "
                         "rolled back): assisted / speculative decoding is not supported")

    def update(self, *args, **kwargs):
        raise ValueError("TransMambaCache is filled by TransMambaForCausalLM itself, not through Cache.update")
