"""The fast CPU inference path: Conv+BN folding, channels_last, optional torch.compile.

Each is a switch (`FastPath`), so benchmarks/bench_infer.py can time every combination side by
side and export can bake the folding into the bundle's programs.

Folding: in eval mode a BatchNorm after a convolution is an affine map per output channel, so it
can be merged into the convolution's weights and bias (w' = w * g / sqrt(var + eps),
b' = (b - mean) * g / sqrt(var + eps) + beta) and the BatchNorm replaced by Identity: one pass over
the activations instead of two. Pairs are found by running one forward with hooks (a BatchNorm
whose input is exactly a convolution's output tensor), which works for any architecture without
knowing its attribute names; the folded model is then checked against the original on the same
batch, so a convolution whose output also feeds something else (folding would change that use)
is caught and the model returned unfolded. DenseNet's pre-activation BatchNorms (BN -> ReLU -> conv)
have no convolution before them and stay as they are.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FastPath:
    """Which inference speed-ups to apply (each measured in benchmarks/bench_infer.py)."""
    fold: bool = True
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, spec: str) -> "FastPath":
        """'eager' (nothing), or '+'-joined names: 'fold', 'fold+cl', 'fold+cl+compile'."""
        parts = set() if spec in ("", "eager", "none") else set(spec.split("+"))
        unknown = parts - {"fold", "cl", "compile"}
        if unknown:
            raise ValueError(f"unknown fast-path part(s) {sorted(unknown)}; use eager or fold, cl, compile joined by +")
        return cls("fold" in parts, "cl" in parts, "compile" in parts)

    def __str__(self) -> str:
        return "+".join(n for n, on in (("fold", self.fold), ("cl", self.channels_last),
                                        ("compile", self.compile)) if on) or "eager"


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Merge eval-mode `bn` into `conv` in place (conv gains a bias)."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(scale.reshape(shape).to(conv.weight.dtype))
        new_bias = (bias - bn.running_mean) * scale + shift
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BatchNorm's input is exactly the convolution's output."""
    produced: dict[int, str] = {}  # id of an output tensor -> the conv that made it
    pairs, keep, hooks = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, CONV):
            def after_conv(mod, inp, out, name=name):
                produced[id(out)] = name
                keep.append(out)  # keep alive so ids stay unique during this forward
            hooks.append(m.register_forward_hook(after_conv))
        elif isinstance(m, BN) and m.track_running_stats:
            def before_bn(mod, inp, name=name):
                conv = produced.get(id(inp[0]))
                if conv is not None:
                    pairs.append((conv, name))
            hooks.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    # a module run twice (shared) would be folded twice: keep only pairs seen once
    return [p for p in dict.fromkeys(pairs) if pairs.count(p) == 1
            and sum(q[0] == p[0] for q in pairs) == 1 and sum(q[1] == p[1] for q in pairs) == 1]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> tuple[nn.Module, int]:
    """An eval-mode copy of `model` with every Conv -> BN pair folded; (model, pairs folded).

    The copy is checked against the original on `example`; if any output differs by more than
    `atol` (relative to the output's scale), the original is returned unchanged with a warning.
    """
    model = model.eval()
    folded = copy.deepcopy(model)
    pairs = _conv_bn_pairs(folded, example)
    for conv_name, bn_name in pairs:
        fold_conv_bn(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        _set_module(folded, bn_name, nn.Identity())
    with torch.no_grad():
        want, got = model(example), folded(example)
    scale = max(1.0, want.abs().max().item())
    if (want - got).abs().max().item() > atol * scale:
        warnings.warn(f"{type(model).__name__}: folding changed its outputs; kept it unfolded")
        return model, 0
    return folded.eval(), len(pairs)


def fast_model(model: nn.Module, example: torch.Tensor, path: FastPath) -> nn.Module:
    """`model` made ready for fast eval-mode inference on inputs shaped like `example`."""
    model = model.eval()
    if path.fold:
        model, _ = fold_batchnorm(model, example)
    if path.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if path.compile:
        model = torch.compile(model, dynamic=True)
    return model


def prepare_input(x: torch.Tensor, path: FastPath) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if path.channels_last else x
