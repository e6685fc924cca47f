"""Process group setup and model wrapping on PyTorch's own engine: DDP by default, FSDP2 (`fully_shard`) on request.

`torchrun --nproc_per_node=N` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python` run is one process and
needs no process group. This module is the only one that reads those environment variables.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nha.layers.attention import NativeHybridAttention


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum floats over ranks (float64 on the device, so NCCL can reduce it)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t)
        return t.tolist()


def launch_rank() -> int:
    """This process's rank as torchrun launched it (0 for a plain run); readable after the process group is gone."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU), or run as one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = launch_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA device is visible")
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local_rank, dev)


def parameters_without_gradient(model: nn.Module) -> list[str]:
    """Names of parameters no forward can reach: the gate projection `f_proj` of a layer whose
    `window_size` is None (full attention keeps the gate so windows can be reassigned later, but never reads it)."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, NativeHybridAttention) and mod.window_size is None and mod.f_proj is not None:
            names += [f"{mod_name}.f_proj.{n}" for n, _ in mod.f_proj.named_parameters()]
    return names


def wrap_model(model: nn.Module, d: Dist, *, fsdp: bool) -> nn.Module:
    """DDP, FSDP2, or the model itself for one process."""
    if d.world_size == 1:
        return model
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        mesh = init_device_mesh(d.device.type, (d.world_size,))
        # one FSDP unit per decoder block, so only one block's full parameters exist at a time, then the root
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    # DDP's reducer waits for a gradient of every parameter; a full-attention layer's gate never gets one and
    # would hang the step. find_unused_parameters walks the autograd graph each step to mark them, which costs
    # time, so it is switched on only when such parameters exist (hybrid presets with gates in full layers).
    # broadcast_buffers=False: the only buffers are RoPE tables, identical on every rank; no per-forward broadcast.
    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
               find_unused_parameters=bool(parameters_without_gradient(model)), broadcast_buffers=False)


def no_grad_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch: skip the gradient all-reduce except on the last micro-batch of a step."""
    if isinstance(model, DDP):
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str | None = None):
    """`with distributed(device) as d:` joins the process group (`init_distributed`) and leaves it on exit."""
    try:
        yield init_distributed(device)
    finally:
        cleanup()
