"""Device, seeding and torchrun/DDP setup shared by every stage."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moskd.errors import MoskdError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def union_across_ranks(items: set) -> set:
    """The union of every rank's `items` (picklable), on every rank; `items` itself outside torchrun.
    A collective under torchrun: every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return set(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, sorted(items))
    return set().union(*map(set, parts))


def parse_device(device: str, cuda_count: int, local_rank: int = 0, world: int = 1) -> torch.device:
    """--device as a torch.device with an explicit index, checked against the CUDA devices torch sees.

    auto = CUDA when present, else the CPU. A bare `cuda` means the current process's GPU: under
    torchrun, local rank k takes GPU k (a torch.device("cuda") without an index is refused by
    torch.cuda.set_device, so the index is always filled in here).
    """
    if device == "auto":
        device = "cuda" if cuda_count > 0 else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if cuda_count == 0:
            raise MoskdError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
        index = device[len("cuda:"):]
        if index == "":
            return torch.device("cuda", local_rank if world > 1 else 0)
        if not index.isdigit() or int(index) >= cuda_count:
            raise MoskdError(f"--device {device}: torch sees CUDA devices 0..{cuda_count - 1}; "
                             f"pass --device cuda or cuda:N with N in that range")
        return torch.device("cuda", int(index))
    raise MoskdError(f"--device {device}: choose auto, cpu, cuda or cuda:N")


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device; join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = parse_device(str(device), cuda_count, local_rank, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local_rank)


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def show_progress(rt: Runtime) -> bool:
    """Progress bars on rank 0 when stderr is a terminal; quiet in logs and CI."""
    return rt.is_main and sys.stderr.isatty()


def log(rt: Runtime, msg: str) -> None:
    if rt.is_main:
        print(msg, flush=True)


def run_stage(cfg, run):
    """Body of every stage command once its torch-free cli module has parsed the config: set up
    the device/process group, run(cfg, rt), tear down."""
    rt = setup_runtime(cfg.device)
    try:
        return run(cfg, rt)
    finally:
        teardown(rt)
