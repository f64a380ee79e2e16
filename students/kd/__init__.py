"""Knowledge-distillation losses, registered by name: a new one (DKD, a feature loss, ...) is one file.

Every module in this package is imported once on first use; each registers its loss with
`@register("name")`. A loss maps (student logits (B, C), teacher logits (B, C), temperature) to
one value per image (B,): the caller weights and averages them (students.losses), so per-image
weighting (complementary students) and the plain batch mean share one code path.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

import torch

KDLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
_REGISTRY: dict[str, KDLoss] = {}


def register(name: str) -> Callable[[KDLoss], KDLoss]:
    def add(fn: KDLoss) -> KDLoss:
        if name in _REGISTRY:
            raise ValueError(f"KD loss {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return add


def _load_all() -> None:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")


def kd_losses() -> tuple[str, ...]:
    """Registered names, sorted."""
    _load_all()
    return tuple(sorted(_REGISTRY))


def get_kd_loss(name: str) -> KDLoss:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"kd_loss must be one of {kd_losses()}, got {name!r}")
    return _REGISTRY[name]
