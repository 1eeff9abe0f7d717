"""FSDP2 for the one training loop (`train.parallel: fsdp`), and activation checkpointing per block.

`shard` trains a copy of the step module whose blocks, then whose root, are wrapped by torch's
`torch.distributed.fsdp.fully_shard` (torch's API directly: accelerate's FSDP plugin falls back to
DDP on CPU). Each rank holds 1/world of every parameter, gradient and AdamW moment (DTensor
shards, `state_bytes`). The recipe's own modules (`run.step_module`, `run.saved`) stay plain
nn.Modules: their parameters are released (size-0 placeholders: any use fails loudly) while the
sharded copy trains, filled with the gathered weights on rank 0 for each evaluation
(`Sharded.gathered`), and with the final weights on every rank by `Sharded.finish` (one gather),
so the recipe saves the student in its usual format afterwards.

Blocks (the FSDP units and the activation-checkpointing units): a module's `fsdp_units()` if it
has one, else the children of every nn.ModuleList named `blocks` or `layers` (LM.blocks, ViT
blocks, Llama layers). Parameters outside them (embeddings, final norm, tied head) belong to the
root unit, so a step module may call the model's `trunk` or read `lm_head.weight` in its forward.

Mixed precision: `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` where the run
resolved amp to bf16 (instead of autocast); fp32 otherwise. Gradient clipping:
`clip_grad_norm_` over the DTensor gradients returns a DTensor norm, made whole by `full_tensor()`.

Sharded checkpoints (`save_sharded` / `load_sharded`): `<step_dir>/dcp/` written by
`torch.distributed.checkpoint` ({"model", "optim"} keyed by parameter names, so any world size
loads it, and a DDP run loads it into its full tensors), config.json, state.json and checksums.json
(every file under dcp/ included), built in one temporary sibling that every rank writes into
(`transmamba.io.files.atomic_directory`, made and renamed into place by rank 0 once every rank's
shard is written). A
DDP checkpoint (model.safetensors + optimizer.pt, full tensors) resumes under FSDP through the
plain modules: the sharded copy is taken from them and the optimizer state is scattered with
`set_optimizer_state_dict(full_state_dict=True)`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from transmamba.io import checkpoint as ckpt
from transmamba.io.files import atomic_directory
from transmamba.training.rng import get_rng_state

SHARDED_DIR = "dcp"  # a sharded checkpoint's torch.distributed.checkpoint folder
PARALLEL = ("ddp", "fsdp")


def find_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of `module` (see the module doc), outermost lists first."""
    units = getattr(module, "fsdp_units", None)
    if callable(units):
        return list(units())
    out: list[nn.Module] = []
    seen: set[int] = set()
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("blocks", "layers"):
            for child in m:
                if id(child) not in seen:
                    seen.add(id(child))
                    out.append(child)
    return out


def checkpoint_blocks(module: nn.Module) -> int:
    """Recompute each block's activations in the backward pass (torch.utils.checkpoint, non-reentrant):
    the block's forward is replaced on the instance. Returns the number of blocks; 0 raises."""
    from torch.utils.checkpoint import checkpoint

    blocks = find_blocks(module)
    if not blocks:
        raise ValueError(f"train.activation_checkpointing: {type(module).__name__} has no blocks (an nn.ModuleList "
                         f"named 'blocks' or 'layers', or a fsdp_units() method) to checkpoint")
    for b in blocks:
        if getattr(b, "_tm_checkpointed", False):
            continue
        inner = b.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        b.forward = forward
        b._tm_checkpointed = True
    return len(blocks)


def ensure_process_group() -> bool:
    """A gloo process group of one when none is up (fully_shard needs one); True when it made it."""
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return True


def _release(params: list[nn.Parameter]) -> None:
    for p in params:
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)


def state_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
    """This rank's parameter, gradient and optimizer-state bytes, measured from the tensors it holds
    (the local shards of DTensors); optimizer scalars (AdamW's step) are not counted."""
    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    out = {"params": sum(nbytes(p) for p in params),
           "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
           "optimizer": sum(nbytes(v) for s in optimizer.state.values() for v in s.values()
                            if isinstance(v, torch.Tensor) and v.dim() > 0)}
    out["total"] = sum(out.values())
    return out


def restore(latest: Path, step_module: nn.Module, saved: nn.Module, optimizer: torch.optim.Optimizer,
            parallel: str) -> dict:
    """Resume from checkpoint `latest` of either format. A DDP checkpoint loads into the plain modules
    (under fsdp the sharded copy is then taken from them); a sharded one loads into the plain modules
    under ddp (every rank reads full tensors) and is left to `Sharded.load` under fsdp ("deferred")."""
    if not is_sharded(latest):
        return ckpt.load_checkpoint(latest, saved, optimizer)
    if parallel == "fsdp":
        ckpt.verify_checkpoint(latest)
        state = ckpt.read_state(latest, verify=False)
        return {"path": latest, "step": int(state["step"]), "config": ckpt.read_config(latest, verify=False),
                "state": state, "deferred": True}
    return load_sharded(latest, step_module, optimizer)


def _names(module: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


class Sharded:
    """The FSDP2 copy of a step module being trained (see the module doc)."""

    def __init__(self, step_module: nn.Module, saved: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, amp: str, activation_checkpointing: bool = False):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_optimizer_state_dict)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.own_group = ensure_process_group()
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.original, self.original_saved = step_module, saved
        prefix = next((n for n, m in step_module.named_modules() if m is saved), None)
        if prefix is None:
            raise ValueError("train.parallel fsdp: the saved module must be a submodule of the step module")
        self.prefix = prefix + "." if prefix else ""
        orig_names = _names(step_module)
        self.module = copy.deepcopy(step_module)  # before sharding: FSDP modules cannot be copied
        self.saved = self.module.get_submodule(prefix) if prefix else self.module
        if activation_checkpointing:
            checkpoint_blocks(self.saved)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if amp == "bf16" \
            else MixedPrecisionPolicy()
        mesh = init_device_mesh(device.type, (self.world,))
        blocks = find_blocks(self.saved)
        if not blocks:
            raise ValueError(f"train.parallel fsdp: {type(saved).__name__} has no blocks to shard (an nn.ModuleList "
                             f"named 'blocks' or 'layers', or a fsdp_units() method)")
        for b in blocks:
            fully_shard(b, mesh=mesh, mp_policy=mp)
        fully_shard(self.module, mesh=mesh, mp_policy=mp)
        by_name = dict(self.module.named_parameters())
        groups = [{**g, "params": [by_name[orig_names[id(p)]] for p in g["params"]]} for g in optimizer.param_groups]
        accepted = inspect.signature(type(optimizer).__init__).parameters
        self.optimizer = type(optimizer)(groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted})
        if optimizer.state:  # resuming a DDP checkpoint loaded into the plain modules: scatter its state
            full = get_optimizer_state_dict(step_module, optimizer)
            set_optimizer_state_dict(self.module, self.optimizer, full,
                                     options=StateDictOptions(full_state_dict=True))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._orig = dict(step_module.named_parameters())
        _release(list(self._orig.values()))
        optimizer.state.clear()

    # ---------------------------------------------------------------------------------- step
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """The global gradient norm (clipping to max_norm) over the sharded gradients, a plain tensor."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def local_named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, p.to_local() if hasattr(p, "to_local") else p) for n, p in self.saved.named_parameters()]

    def sync(self, last: bool):
        """Context for a micro-batch: the gradient reduce-scatter runs on the last one only."""
        import contextlib

        self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------------------------- whole weights
    def _fill_original(self, rank0_only: bool) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True,
                                                                            cpu_offload=rank0_only))
        if full:
            for n, p in self._orig.items():
                p.data = full[n].to(device=p.device, dtype=p.dtype)

    def gathered(self):
        """Context: the recipe's modules hold the current weights on rank 0 (every rank takes part)."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self._fill_original(rank0_only=True)
            try:
                yield
            finally:
                _release(list(self._orig.values()))

        return ctx()

    def finish(self) -> None:
        """Put the final weights into the recipe's modules on every rank (one gather) and drop the copy."""
        self._fill_original(rank0_only=False)
        self.optimizer.state.clear()
        del self.module, self.saved, self.optimizer, self.params
        if self.own_group:
            dist.destroy_process_group()

    # ---------------------------------------------------------------------------------- checkpoints
    def save(self, final: Path, step: int, config: dict, extra: dict) -> Path:
        return save_sharded(final, self.module, self.optimizer, step, config, extra)

    def load(self, dir: Path) -> dict:
        return load_sharded(dir, self.module, self.optimizer)


def _main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _all(flag: bool) -> bool:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([0 if flag else 1])
    dist.all_reduce(t)
    return int(t) == 0


def is_sharded(dir: str | os.PathLike) -> bool:
    return (Path(dir) / SHARDED_DIR).is_dir()


def save_sharded(final: str | os.PathLike, module: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                 config: dict, extra: dict) -> Path:
    """Every rank writes its shards of the model and optimizer state (see the module doc); NaN/Inf in
    any rank's shards raise NonFiniteTensorError on every rank before anything is written."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    final = Path(final)
    msd = get_model_state_dict(module)
    osd = get_optimizer_state_dict(module, optimizer)
    local = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in msd.items()]
    local += [(f"{k} of parameter {n}", v.to_local() if hasattr(v, "to_local") else v)
              for n, s in osd["state"].items() for k, v in s.items() if isinstance(v, torch.Tensor)]
    bad = ckpt.first_nonfinite(local)
    if not _all(bad is None):
        raise ckpt.NonFiniteTensorError(f"refusing to save checkpoint {final}: "
                                        f"{'tensor ' + repr(bad) if bad else 'another rank shard'} holds NaN/Inf "
                                        f"values (the model diverged); earlier checkpoints are left as they are",
                                        tensor=bad)
    # rank 0 makes the temporary directory (the one scheme of io/files.py) and publishes it once every
    # rank's shards are in (dcp.save ends with a collective); the other ranks write into it
    try:
        with atomic_directory(final, replace=True, manifest=True) if _main() else contextlib.nullcontext() as tmp:
            if dist.is_initialized() and dist.get_world_size() > 1:
                box = [None if tmp is None else str(tmp)]
                dist.broadcast_object_list(box, src=0)
                tmp = Path(box[0])
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / SHARDED_DIR))
            if _main():  # checksums.json (every file under dcp/ included) is written last by atomic_directory
                state = {"step": int(step), "rng": get_rng_state(), "checksums": ckpt.MANIFEST_FILE,
                         "parallel": "fsdp", "world": dist.get_world_size() if dist.is_initialized() else 1, **extra}
                (tmp / ckpt.CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
                (tmp / ckpt.STATE_FILE).write_text(json.dumps(state, default=ckpt.json_default))
    finally:
        if dist.is_initialized():
            dist.barrier()
    return final


def load_sharded(dir: str | os.PathLike, module: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore a sharded checkpoint into `module` (FSDP-sharded or plain: DCP reshards) and `optimizer`,
    after checking every file against checksums.json. Returns {"path", "step", "config", "state"}."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    dir = Path(dir)
    ckpt.verify_checkpoint(dir)
    config = ckpt.read_config(dir, verify=False)
    state = ckpt.read_state(dir, verify=False)
    sd = {"model": get_model_state_dict(module)}
    if optimizer is not None:
        sd["optim"] = get_optimizer_state_dict(module, optimizer)
    try:
        dcp.load(sd, checkpoint_id=str(dir / SHARDED_DIR))
    except Exception as e:  # noqa: BLE001  (DCP wraps reader errors in its own types)
        raise ValueError(f"sharded checkpoint {dir} does not fit this model/optimizer: {e}") from None
    set_model_state_dict(module, sd["model"])
    if optimizer is not None:
        set_optimizer_state_dict(module, optimizer, sd["optim"])
    return {"path": dir, "step": int(state["step"]), "config": config, "state": state}
