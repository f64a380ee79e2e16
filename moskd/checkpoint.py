"""Checkpoints: atomic writes, safe loads (weights_only=True), model-card checks.

A checkpoint is a plain dict: model (and ema) weights, optimizer/scheduler state, epoch, resolved
config, metrics and a model card. `load_checkpoint` never runs code from the file and turns every
failure (missing, truncated, not a checkpoint, code inside, wrong role/arch/classes) into one
MoskdError line.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from moskd.atomic import atomic_write
from moskd.errors import MoskdError

CARD_KEYS = ("role", "arch", "num_classes", "class_names", "in_chans", "input_size", "mean", "std", "dataset")


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through the one atomic writer: a kill never leaves half a file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) with every failure mapped to one clear line."""
    path = Path(path)
    if not path.is_file():
        raise MoskdError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning adds nothing to the error line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        why = "it holds objects or code beyond tensors and plain data, so it was not loaded"
        if reason and "Weights only load failed" not in reason[0]:
            why = f"not a readable checkpoint ({reason[0][:120]})"
        raise MoskdError(f"{path}: {why}; use a checkpoint written by moskd") from None
    except Exception as e:  # noqa: BLE001 - the legacy unpickler raises anything (IndexError, EOFError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise MoskdError(f"{path}: truncated or not a torch checkpoint ({first}); retrain or restore the file") from None


def load_checkpoint(path: str | os.PathLike, *, role: str | None = None, arch: str | None = None,
                    num_classes: int | None = None, dataset: str | None = None, hint: str = "") -> dict:
    """Read a moskd checkpoint and check its card against what the caller expects."""
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("card"), dict) or "model" not in ckpt:
        raise MoskdError(f"{path}: not a moskd checkpoint (no model card); use a checkpoint written by moskd")
    card = ckpt["card"]
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise MoskdError(f"{path}: model card lacks {', '.join(missing)}; use a checkpoint written by moskd")
    fix = f"; {hint}" if hint else ""
    for key, want in (("role", role), ("arch", arch), ("num_classes", num_classes), ("dataset", dataset)):
        if want is not None and card[key] != want:
            raise MoskdError(f"{path}: is a {key} '{card[key]}' checkpoint, expected {key} '{want}'{fix}")
    return ckpt


def inference_weights(ckpt: dict) -> dict:
    """The weights to predict with: the EMA copy when training kept one."""
    return ckpt.get("ema") or ckpt["model"]

