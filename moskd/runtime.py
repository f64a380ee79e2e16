"""Device, seeding and torchrun/DDP setup shared by every stage."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moskd.config import parse_config
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


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device; join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MoskdError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
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


def stage_main(argv, config_cls, run, prog: str, doc: str, section: str):
    """Body of every stage command: parse the config, set up the device/process group, run, tear down."""
    cfg = parse_config(config_cls, argv, prog, doc, section=section)
    rt = setup_runtime(cfg.device)
    try:
        return run(cfg, rt)
    finally:
        teardown(rt)
