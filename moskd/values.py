"""What a valid setting value is, by setting name, for every command: number ranges (RANGES),
declared choices with the nearest name when a value is misspelt, --device's syntax, and --resume
with --force. moskd.config applies these to flags and config files alike."""
from __future__ import annotations

import difflib
import math
import re
from typing import Any

from moskd.errors import MoskdError

# Valid ranges by setting name, for every command that has the setting (scikit-learn style: every
# entry point validates the same way): (low, high, low inclusive, high inclusive); None = unbounded.
# A list setting (--temperatures 1 4 10) has each element checked.
RANGES: dict[str, tuple] = {
    "epochs": (1, None, True, True), "batch_size": (1, None, True, True), "eval_batch_size": (1, None, True, True),
    "limit": (1, None, True, True), "train_limit": (1, None, True, True), "image_size": (1, None, True, True),
    "warmup_epochs": (0, None, True, True), "lr": (0, None, False, True), "min_lr": (0, None, True, True),
    "weight_decay": (0, None, True, True), "momentum": (0, 1, True, False), "lr_decay": (0, 1, False, True),
    "lr_milestones": (0, None, True, True), "label_smoothing": (0, 1, True, False), "ema_decay": (0, 1, True, False),
    "select_fraction": (0, 1, False, False), "test_fraction": (0, 1, False, False),
    "seed": (0, None, True, True), "seeds": (0, None, True, True), "split_seed": (0, 2**32 - 2, True, True),
    "cache_seed": (0, None, True, True),
    "alpha": (0, 1, True, True), "alphas": (0, 1, True, True), "temperature": (0, None, False, True),
    "temperatures": (0, None, False, True), "teacher_cache": (0, None, True, True),
    "target_accuracy": (0, 1, False, True), "other_weight": (0, 1, False, True),
    "width": (1, None, True, True), "dropout": (0, 1, True, False), "holdout_fraction": (0, 1, False, False),
    "tie_margin": (0, None, True, True),
    "port": (0, 65535, True, True), "max_batch": (1, None, True, True), "max_bytes": (1, None, True, True),
    "threads": (1, None, True, True),
}
# `StudentTrain --model N` numbers, as in the original project (the pipeline trains both); spelt here,
# torch-free, so config files can name them (moskd.models re-exports it)
SEED_STUDENTS = {"1": "densenet121", "2": "googlenet"}
SCHEDULERS = ("cosine", "step", "multistep", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0"}


def _range_text(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def out_of_range(name: str, value: Any) -> str | None:
    """'must be ...' when a number (or any element of a list of numbers) lies outside RANGES[name]."""
    if name not in RANGES or value is None:
        return None
    low, high, low_in, high_in = RANGES[name]
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # a type error, reported by the type check
        ok = (math.isfinite(v) and (v >= low if low_in else v > low)
              and (high is None or (v <= high if high_in else v < high)))
        if not ok:
            return f"{v}: must be {_range_text(low, high, low_in, high_in)}"
    return None


def nearest(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f"; did you mean {close[0]}?" if close else ""


def not_a_choice(name: str, value: Any, choices: Any, ignore_case: bool = False) -> str | None:
    """'choose one of ...' (with the nearest name) when value is not among the setting's choices."""
    if value is None:
        return None
    if name == "device":
        if value in DEVICES[:3] or re.fullmatch(r"cuda:\d+", str(value)):
            return None
        hint = _DEVICE_ALIASES.get(str(value).lower())
        return f"{value}: choose auto, cpu, cuda or cuda:N" + (f"; did you mean {hint}?" if hint else "")
    if choices is None:
        return None
    known = list(choices() if callable(choices) else choices)  # callable: a registry read only when needed
    for v in value if isinstance(value, list) else [value]:
        if v in known or (ignore_case and str(v).lower() in known):
            continue
        listed = f"choose one of {', '.join(map(str, known))}" if len(known) <= 10 else \
            f"not one of the {len(known)} names it knows"
        return f"{v}: {listed}{nearest(str(v).lower() if ignore_case else v, known)}"
    return None


def check_values(values: dict[str, Any], choices: dict[str, tuple] | None = None) -> None:
    """Refuse an out-of-range number, an unknown choice or --resume with --force: one MoskdError line
    naming the flag. `choices` maps a setting to (choices or a callable giving them, ignore case)."""
    choices = choices or {}
    for name, value in values.items():
        opts, ignore_case = choices.get(name, (None, False))
        problem = out_of_range(name, value) or not_a_choice(name, value, opts, ignore_case)
        if problem:
            raise MoskdError(f"--{name.replace('_', '-')} {problem}")
    if values.get("resume") and values.get("force"):
        raise MoskdError("--resume continues the run in the stage folder, --force starts it over: pass one of them")


def choices_of(cls: type) -> dict[str, tuple]:
    """(choices, ignore case) of every field of a config dataclass that declares them; a field a
    subclass redefines (a new default, say) keeps the choices its base class declared."""
    out: dict[str, tuple] = {}
    for base in reversed(cls.__mro__):
        for f in getattr(base, "__dataclass_fields__", {}).values():
            if "choices" in f.metadata:
                out[f.name] = (f.metadata["choices"], f.metadata.get("ignore_case", False))
    return out


def timm_optimizers() -> list[str]:
    """The optimizer names timm's factory takes (imported only when a value must be checked)."""
    from timm.optim import list_optimizers

    return list_optimizers()
