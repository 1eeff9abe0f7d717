"""How much memory a training run needs, what the machine has, and the refusal when it does not fit.

`training_bytes` estimates one process's peak during a training step, in fp32 (the engine keeps
master weights, gradients and AdamW state in fp32; bf16 autocast only makes activations smaller,
so fp32 is the conservative figure):

    state        = 16 * trainable + 4 * frozen parameters      weights + grads + AdamW m and v
                   (under train.parallel fsdp the trainable part is sharded: / processes)
    activations  = 4 bytes * tokens * (layers * per_layer + 3 * vocab)
                   tokens = the micro-batch's batch x seq_len on this process
                   per_layer (floats kept for backward per token and layer; every layer counted as
                   the widest kind, attention and SSM both, so hybrids are not underestimated)
                     = 4 d_model + 4 d_ff + 6 d_inner + 4 d_state + 4 n_heads head_dim + 2 n_heads seq_len
                       (norms/residuals, the gated MLP, the Mamba-2 in/out projections and scan,
                        q/k/v/o, and the softmax scores and probabilities of the math attention path)
                   3 * vocab: logits, their log-softmax and its gradient
                   with activation checkpointing only each layer's input (d_model) is kept, plus one
                   layer recomputed at a time

Measured on CPU for the 17.3M-parameter configs/lm model (batch 4 x 512 tokens): transmamba peaks at
1.53 GiB above the loaded process where this estimate says 1.6 GiB, the transformer at 1.17 GiB,
so the estimate is on the high side (and allocator slack is not in it).

`available_bytes` is what the device can still give: CUDA `torch.cuda.mem_get_info` (free), CPU
MemAvailable of /proc/meminfo (os.sysconf's available pages elsewhere). On CPU the processes of one
run share the RAM, so `check_fits` compares processes x estimate with it.

`check_fits` raises `MemoryEstimateError` (a UserError: `error:` and exit 2 from the CLI) before any
allocation when the estimate exceeds what is available, with both numbers and the override
`--train.skip_memory_check true` in the message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from transmamba.errors import UserError

SKIP_KEY = "train.skip_memory_check"
GiB = 1024**3


class MemoryEstimateError(UserError):
    """A run's estimated memory exceeds what the device has available."""


@dataclass
class Estimate:
    """An estimate in bytes, by part (for the message)."""

    state: int
    activations: int

    @property
    def total(self) -> int:
        return self.state + self.activations


def state_bytes(trainable: int, frozen: int = 0, *, shards: int = 1) -> int:
    """fp32 weights, gradients and AdamW m and v of the trainable parameters (/ shards under FSDP),
    fp32 weights of the frozen ones."""
    return 16 * -(-int(trainable) // max(1, shards)) + 4 * int(frozen)


def lm_activation_bytes(*, tokens: int, seq_len: int, n_layers: int, d_model: int, d_ff: int, vocab_size: int,
                        d_inner: int = 0, d_state: int = 0, n_heads: int = 0, head_dim: int = 0,
                        activation_checkpointing: bool = False) -> int:
    """fp32 activations kept for the backward pass of one micro-batch of `tokens` tokens (the
    formula in the module docstring)."""
    per_layer = (4 * d_model + 4 * d_ff + 6 * d_inner + 4 * d_state + 4 * n_heads * head_dim
                 + 2 * n_heads * seq_len)
    layers = (n_layers * d_model + per_layer) if activation_checkpointing else n_layers * per_layer
    return 4 * int(tokens) * (layers + 3 * int(vocab_size))


def lm_estimate(model_cfg, n_params: int, *, batch_size: int, seq_len: int, grad_accum: int = 1,
                processes: int = 1, parallel: str = "ddp", activation_checkpointing: bool = False) -> Estimate:
    """Estimate for training an `LMConfig` with `n_params` parameters on global batches of
    batch_size x seq_len, split over `processes` and `grad_accum` micro-batches."""
    per_micro = -(-int(batch_size) // max(1, processes * grad_accum))
    c = model_cfg
    d_ff = int(c.d_ff or 0)
    act = lm_activation_bytes(tokens=per_micro * int(seq_len), seq_len=int(seq_len), n_layers=int(c.n_layers),
                              d_model=int(c.d_model), d_ff=d_ff, vocab_size=int(c.vocab_size),
                              d_inner=int(c.expand) * int(c.d_model), d_state=int(c.d_state),
                              n_heads=int(c.n_heads), head_dim=int(c.head_dim),
                              activation_checkpointing=activation_checkpointing)
    shards = processes if parallel == "fsdp" else 1
    return Estimate(state_bytes(n_params, shards=shards), act)


def resolve_device(device: str | torch.device) -> torch.device:
    """The device a run's `device` setting means ("auto": CUDA when there is one, else CPU)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device, key: str = "device") -> torch.device:
    """The device `device` names, refusing (ValueError naming `key`) one this machine does not have:
    "cuda" without a CUDA device (torch would otherwise fall back to the CPU and report success),
    "cuda:3" on a 2-GPU machine, or a string that is not a device."""
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"config key {key!r} must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    try:
        dev = resolve_device(device)
    except RuntimeError:
        raise ValueError(f"config key {key!r} must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"config key {key!r} is {str(device)!r} but this machine has no CUDA device "
                             f"(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"config key {key!r} is {str(device)!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type != "cpu":
        raise ValueError(f"config key {key!r} must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    return dev


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: str | torch.device) -> tuple[int | None, str]:
    """(bytes the device can still give, where that number comes from); None when unknown."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return int(free), f"free on cuda:{index} (of {total / GiB:.1f} GiB)"
    if dev.type == "cpu":
        return _meminfo_available(), "MemAvailable in /proc/meminfo"
    return None, f"unknown for {dev.type}"


def check_fits(estimate: Estimate | int, device: str | torch.device, *, processes_sharing: int = 1,
               what: str = "this run", skip: bool = False) -> None:
    """Raise MemoryEstimateError when processes_sharing x estimate exceeds the device's available
    memory (nothing is allocated yet); silent when skip or when the machine does not say."""
    if skip:
        return
    total = estimate.total if isinstance(estimate, Estimate) else int(estimate)
    need = total * max(1, processes_sharing)
    have, source = available_bytes(device)
    if have is None or need <= have:
        return
    parts = (f" (weights, gradients and AdamW state {estimate.state / GiB:.2f} GiB, activations "
             f"{estimate.activations / GiB:.2f} GiB{' per process' if processes_sharing > 1 else ''})"
             if isinstance(estimate, Estimate) else "")
    procs = f" ({processes_sharing} processes of {total / GiB:.2f} GiB)" if processes_sharing > 1 else ""
    raise MemoryEstimateError(
        f"{what} needs about {need / GiB:.2f} GiB{procs}{parts} but {resolve_device(device)} has "
        f"{have / GiB:.2f} GiB available ({source}); use a smaller train.batch_size, train.seq_len or model, "
        f"more train.grad_accum, or pass --{SKIP_KEY} true to start anyway")
