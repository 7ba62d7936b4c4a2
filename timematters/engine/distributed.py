"""Devices and processes: torchrun + DistributedDataParallel plumbing (one process per device,
rank 0 writes), the device to run on and its mixed-precision type.

``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs
in one process. NCCL on GPUs, gloo on the CPU. Multi-node is torchrun's rendezvous flags.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Whether this process is torchrun's rank 0 (or the only one): the one that prints and writes
    a command's results, also once the process group is gone."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where supported, fp16 (with a scaler) otherwise, off on the CPU unless asked for."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (or run alone when it did not launch us)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, resolved)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the identity in a single process)."""
    tensor = tensor.clone()
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return all_reduce_sum(tensor) / world


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP sends them at the start
    of each training forward, so each rank's last batch leaves its own: an evaluation between
    steps would score a model no checkpoint holds on every rank but rank 0."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def on_main_for_all(work: Callable[[], None]) -> None:
    """``work()`` on rank 0 (a check of the run folder, say), its error raised on every rank:
    the others would otherwise wait for rank 0 at the next barrier and die there with a transport
    error. The error is marked ``shared_from_main``, so that only rank 0 prints it."""
    error = None
    if is_main_process():
        try:
            work()
        except Exception as raised:
            error = raised
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and not is_main_process():
            error = box[0]
            error.shared_from_main = True
    if error is not None:
        raise error


class OutOfDeviceMemory(RuntimeError):
    """The device ran out of memory; the message names the settings that need less."""


def out_of_memory(error: torch.cuda.OutOfMemoryError, doing: str, fix: str) -> OutOfDeviceMemory:
    """torch's out-of-memory error (a traceback around "Tried to allocate ...") as one line that
    says what was being done and which settings need less memory."""
    said = ". ".join(str(error).split(". ")[:2])  # "CUDA out of memory. Tried to allocate 2 GiB"
    return OutOfDeviceMemory(f"out of device memory {doing} ({said}): {fix}")
