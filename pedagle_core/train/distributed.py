"""Distributed training glue: process group, DDP / FSDP2 wrapping, gradient-sync control, full state dicts.

Launch with ``torchrun --nproc-per-node N -m pedagle_core.cli train ... --distributed ddp|fsdp`` (NCCL on
CUDA, gloo on CPU). Every rank processes its own packed sequences; gradients are averaged over ranks,
and the loss is count-normalised over the supervised elements of all ranks (see ``loss.py``), so a
run on W ranks equals a single-process run with ``--grad-accum W`` on the same data.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "none"          # none | ddp | fsdp
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def init_distributed(mode: str, device: str | None = None) -> DistInfo:
    """Initialise the process group from torchrun's environment (RANK/WORLD_SIZE/LOCAL_RANK) when present."""
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"--distributed = {mode!r}; expected 'none', 'ddp' or 'fsdp'")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and mode == "none":
        mode = "ddp"
    if mode != "none" and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60),
                                device_id=dev if dev.type == "cuda" else None)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, mode, dev)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP (``broadcast_buffers=False``: buffers are constant) or FSDP2 (``fully_shard`` per decoder layer,
    then the root) or the module itself."""
    if info.mode == "ddp" and dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel as DDP
        import inspect
        ids = [info.device.index] if info.device.type == "cuda" else None
        # buffers (d2t, rope frequencies) are identical on every rank: no per-forward buffer sync
        params = inspect.signature(DDP.__init__).parameters
        kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DDP(model, device_ids=ids, **kw)
    if info.mode == "fsdp" and dist.is_initialized():
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.device_mesh import init_device_mesh
        # the mesh on this run's device type: fully_shard's default mesh is CUDA whenever CUDA exists,
        # which would move a --device cpu run's parameters to the GPU
        mesh = init_device_mesh(info.device.type, (dist.get_world_size(),))
        for layer in model.drafter.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return model


def grad_sync_fn(model: nn.Module, info: DistInfo):
    """``grad_sync(is_last)``: a context for one forward+backward that reduces gradients only on the last."""
    if info.mode == "ddp" and dist.is_initialized():
        def ddp_sync(last: bool):
            return contextlib.nullcontext() if last else model.no_sync()
        return ddp_sync
    if info.mode == "fsdp" and dist.is_initialized():
        @contextlib.contextmanager
        def fsdp_sync(last: bool):
            model.set_requires_gradient_sync(last)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return fsdp_sync
    return lambda last: contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if dist.is_initialized() and info.world_size > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if dist.is_initialized() and info.world_size > 1:
        dist.barrier()


def all_gather_objects(obj, info: DistInfo) -> list:
    if dist.is_initialized() and info.world_size > 1:
        out = [None] * info.world_size
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj, info: DistInfo):
    if dist.is_initialized() and info.world_size > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, info: DistInfo):
    """Unsharded (model, optimizer) state dicts on the CPU, keys as in the unwrapped module."""
    if info.mode == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
        return msd, osd
    base = unwrap(model)
    msd = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
    osd = None
    if optimizer is not None:
        # Key the optimizer state by parameter name so it survives re-wrapping.
        names = {id(p): n for n, p in base.named_parameters()}
        raw = optimizer.state_dict()
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        osd = {"state": {order[i]: {k: (v.cpu().clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                         for i, s in raw["state"].items()},
               "param_groups": [{k: v for k, v in g.items() if k != "params"} | {"params": [order[i] for i in g["params"]]}
                                for g in raw["param_groups"]]}
    return msd, osd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, msd: dict, osd: dict | None,
                    info: DistInfo) -> None:
    if info.mode == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, msd, options=opts)
        if optimizer is not None and osd is not None:
            set_optimizer_state_dict(model, optimizer, osd, options=opts)
        return
    base = unwrap(model)
    base.load_state_dict(msd)
    if optimizer is not None and osd is not None:
        names = {id(p): n for n, p in base.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        index = {n: i for i, n in enumerate(order)}
        dev_of = {n: p.device for n, p in base.named_parameters()}
        state = {index[n]: {k: (v.to(dev_of[n]) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in s.items()}
                 for n, s in osd["state"].items()}
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [index[n] for n in g["params"]]}
                  for g in osd["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})


def cleanup(info: DistInfo) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
