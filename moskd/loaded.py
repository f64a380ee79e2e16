"""What loading a run's checkpoints gives back, and the checks every loader makes: the Student
record, which students are baselines, the split check, and the teacher loader (moskd.run uses
them; they spell no run path)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moskd.errors import MoskdError

if TYPE_CHECKING:
    from torch import nn

BASELINE_SUFFIX = "-baseline"
SPLIT_KEYS = ("split_seed", "select_fraction", "test_fraction")  # settings that decide which image is where


@dataclass
class Student:
    name: str  # its folder under RUN/students
    path: Path
    card: dict
    model: Any  # nn.Module
    macs: int  # per image at the card's input size
    config: dict = field(default_factory=dict)  # the resolved config it was trained with ({} when unknown)


def is_baseline(name: str, card: dict) -> bool:
    """A student trained without a teacher: '-baseline' folder or a card with kd_loss None."""
    dist = card.get("distillation")
    return name.endswith(BASELINE_SUFFIX) or (isinstance(dist, dict) and dist.get("kd_loss") is None)


def check_same_split(trained: dict, split: dict, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained on another split: its `train` images could sit in our `select` or
    `test`. trained: the checkpoint's resolved config; split: this run's settings (SPLIT_KEYS)."""
    for key in SPLIT_KEYS:
        if key in trained and key in split and trained[key] != split[key]:
            flag = "--" + key.replace("_", "-")
            raise MoskdError(f"{path}: trained with {flag} {trained[key]}, this run uses {split[key]}; "
                             f"pass {flag} {trained[key]} so both see the same split")


def load_teacher(path: str | os.PathLike, *, dataset: str | None = None, num_classes: int | None = None,
                 like: dict | None = None, split: dict | None = None, device="cpu",
                 hint: str = "use the teacher of this run", frozen: bool = False) -> tuple[nn.Module, dict]:
    """A teacher checkpoint as (model in eval mode, card), every mismatch one MoskdError line.

    dataset/num_classes: what its card must say. like: a card (input size, mean, std) whose batches
    it must take; a teacher preprocessed otherwise (trained on another --limit slice, or imported
    with its own size and normalisation) is wrapped in moskd.teacher_input.TeacherInput. split: this run's split settings, which the teacher's must equal. frozen: no gradients.
    """
    from moskd.checkpoint import load_checkpoint
    from moskd.models import build_model_from_checkpoint
    from moskd.teacher_input import build_teacher, teacher_input

    path = Path(path)
    if not path.is_file():
        raise MoskdError(f"no teacher checkpoint at {path}; {hint}")
    ckpt = load_checkpoint(path, role="teacher", dataset=dataset, num_classes=num_classes, hint=hint)
    card = ckpt["card"]
    imported = bool(card.get("teacher_source"))  # moskd.teacher_import: its own preprocessing, any size
    if like is not None and not imported and list(card["input_size"]) != list(like["input_size"]):
        raise MoskdError(f"{path}: teacher takes {card['input_size']} inputs, this data is "
                         f"{like['input_size']}; {hint}")
    check_same_split(ckpt.get("config") or {}, split or {}, path)
    if imported:

        model = build_teacher(ckpt, path).to(device)
    else:
        model = build_model_from_checkpoint(ckpt).to(device)
    if like is not None:  # the one conversion of the shared batch into the teacher's input
        model = teacher_input(model, like, card).to(device)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    return model.eval(), card
