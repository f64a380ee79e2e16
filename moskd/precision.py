"""The one precision and memory-layout policy: which autocast dtype, which layout, on which device.

Training, the teacher cache, the online teacher, selector labels, the router and the report all ask
this module instead of deciding for themselves, so a change of policy is one edit.

- CUDA: bf16 autocast (when `amp`) and channels_last, for training and for inference.
- CPU, training and the teacher cache: channels_last (oneDNN's convolutions are faster on NHWC)
  and, where the CPU has native bf16 units (AVX512-BF16 or AMX), bf16 autocast; elsewhere bf16 is
  emulated and slower, so it stays off. Measured side by side by benchmarks/bench_precision.py
  (docs/results/benchmarks/bench_precision.txt: bf16+channels_last trains ResNet50 1.65x,
  DenseNet121 2.54x, GoogLeNet 1.09x as fast as fp32 at 28x28 on 2 AVX512-BF16 cores).
- CPU, inference (selector labels, router, report): fp32 in the default layout, exactly what the
  exported bundle runs, so the report measures what ships and a bundle reproduces the run's routes
  bit for bit (a near-tie between two students' scores can flip on a last-bit difference).
  `inference --fast` has its own measured CPU path (moskd.fold).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when oneDNN can run bf16 kernels natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """How models and inputs are laid out and which dtype autocast uses (None = fp32)."""
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool = True

    def model(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device in the policy's layout (in place, like nn.Module.to)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the device in the policy's layout (other tensors only move)."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """model(x) under the policy, as fp32 logits (losses and metrics are computed in fp32)."""
        with self.autocast():
            return model(self.input(x)).float()

    @property
    def name(self) -> str:
        dtype = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        return f"{dtype}{'+channels_last' if self.channels_last else ''}"


def choose_precision(device: torch.device | str, amp: bool = True, training: bool = False) -> Precision:
    """The policy for work on `device`: `training` covers the training loop and the teacher cache."""
    device = torch.device(device)
    if device.type == "cuda":
        return Precision(device, torch.bfloat16 if amp else None)
    if device.type == "cpu":
        if not training:
            return Precision(device, None, channels_last=False)
        return Precision(device, torch.bfloat16 if amp and cpu_has_native_bf16() else None)
    return Precision(device, None, channels_last=False)
