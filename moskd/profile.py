"""What a model costs: parameters, bytes of its saved weights, MACs per image.

MACs are counted by torch.utils.flop_counter.FlopCounterMode (which counts matmul and
convolution FLOPs) as FLOPs / 2, for one image at the dataset's input size, on the meta device
so that counting a ResNet50 at 224x224 takes no compute.
"""
from __future__ import annotations

import copy
import io

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _outside_torch(model: nn.Module) -> list[tuple[int, int]]:
    """(parameters, bytes) of the submodules whose weights live outside torch: an imported ONNX teacher
    (moskd.teacher_input.OnnxTeacher.graph_weights) holds none in its state dict."""
    return [m.graph_weights() for m in model.modules() if hasattr(m, "graph_weights")]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(n for n, _ in _outside_torch(model))


def weights_bytes(model: nn.Module) -> int:
    """Size of torch.save(model.state_dict()): the model's weights file (plus any ONNX graph's file)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes + sum(b for _, b in _outside_torch(model))


def count_macs(model: nn.Module, input_size: list[int] | tuple[int, ...]) -> int:
    """Multiply-accumulates of one eval-mode forward of a single (C, H, W) image."""
    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, *input_size, device="meta"))
    return counter.get_total_flops() // 2


def model_cost(model: nn.Module, input_size) -> dict:
    return {"params": count_params(model), "bytes": weights_bytes(model), "macs": count_macs(model, input_size)}
