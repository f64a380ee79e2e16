"""Warn when a student is about to learn from a poor teacher.

Distillation copies the teacher's mistakes along with its knowledge, so a teacher far below what it
should reach is worth one line before the student spends its epochs on it. "Far below" is:

- the teacher's recipe set `target_accuracy` (teacherTrain --target-accuracy, kept in its
  checkpoint's config) and its best `select` accuracy is more than TARGET_SLACK below it; or
- no target was set and its best `select` accuracy is less than halfway from chance (1 / classes)
  to perfect, e.g. below 55% on 10 classes: a teacher that weak is rarely worth distilling from.

Only a warning: a deliberately weak teacher (a test, a smoke run) is the user's call.
"""
from __future__ import annotations

from moskd.calibration import ece

import warnings
from pathlib import Path

from moskd.errors import warn

TARGET_SLACK = 0.05  # accuracy points below the recipe's target that still count as on target


def poor_teacher_reason(best: float, num_classes: int, target: float | None) -> str | None:
    """Why a teacher with best select accuracy `best` is far below what it should reach, or None."""
    if target is not None:
        if best < target - TARGET_SLACK:
            return (f"its best select accuracy {best:.3f} is {100 * (target - best):.1f} points below its "
                    f"recipe's target {target:.2f}")
        return None
    chance = 1.0 / max(num_classes, 1)
    if best < chance + 0.5 * (1.0 - chance):
        return (f"its best select accuracy {best:.3f} on {num_classes} classes is less than halfway from "
                f"chance ({chance:.3f}) to perfect")
    return None


def warn_if_poor_teacher(path: Path, num_classes: int) -> str | None:
    """One warning line (once per process) when the teacher checkpoint at `path` is poor; returns it."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # mmap: the accuracy and config are read without reading the weights
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the caller has already loaded (and vetted) this file
        return None
    best = ckpt.get("best_metric") if isinstance(ckpt, dict) else None
    if not isinstance(best, (int, float)):
        return None  # a foreign checkpoint: nothing to compare
    reason = poor_teacher_reason(float(best), num_classes, (ckpt.get("config") or {}).get("target_accuracy"))
    if reason is None:
        return None
    message = (f"teacher {path}: {reason}; students distilled from it inherit its mistakes (train the "
               f"teacher longer or with a better recipe, or compare with --no-teacher)")
    warn(message)
    return message


# ---------------------------------------------------------------- an imported teacher, before it teaches

# Default bar for an imported teacher (--teacher-min-accuracy): a quarter of the way from chance to
# perfect (32.5% on 10 classes). A shuffled class order or another normalisation scores near chance;
# a teacher that works, even a weak one, clears it.
DEFAULT_FROM_CHANCE = 0.25


def default_min_accuracy(num_classes: int) -> float:
    chance = 1.0 / max(num_classes, 1)
    return chance + DEFAULT_FROM_CHANCE * (1.0 - chance)


def score_on_select(model, card: dict, data, batch_size: int = 256, device="cpu") -> dict:
    """Accuracy and ECE (15 bins) of a teacher on `select`, fed through the one input conversion."""
    import numpy as np
    import torch

    from moskd.loader import make_loader
    from moskd.teacher_input import teacher_input

    wrapped = teacher_input(model, data.card(), card).to(device).eval()
    logits, targets = [], []
    with torch.inference_mode():
        for batch in make_loader(data, "select", batch_size, device=device):
            logits.append(wrapped(batch[0]).float().cpu())
            targets.append(batch[1].cpu())
    z, y = torch.cat(logits).numpy(), torch.cat(targets).numpy()
    return {"accuracy": float((z.argmax(1) == y).mean()), "ece": ece(z.astype(np.float64), y),
            "images": int(len(y))}


def check_imported_teacher(model, card: dict, data, *, min_accuracy: float | None, batch_size: int = 256,
                           device="cpu", log=print) -> dict:
    """Score an imported teacher on `select`, print it, refuse (exit 2) one below the bar."""
    from moskd.errors import MoskdError

    scores = score_on_select(model, card, data, batch_size, device)
    bar = default_min_accuracy(data.num_classes) if min_accuracy is None else float(min_accuracy)
    scores["min_accuracy"] = bar
    source = card.get("teacher_source", "teacher")
    log(f"teacher {source} on select ({scores['images']} images): accuracy {scores['accuracy']:.4f}, "
        f"ECE {scores['ece']:.4f} (bar {bar:.4f})")
    if scores["accuracy"] < bar:
        chance = 1.0 / max(data.num_classes, 1)
        raise MoskdError(f"teacher {source}: accuracy {scores['accuracy']:.3f} on select ({scores['images']} "
                         f"images; chance {chance:.3f}) is below --teacher-min-accuracy {bar:.3f}; check its class "
                         f"order (--teacher-classes) and preprocessing (--teacher-config mean/std/input_size)")
    return scores
