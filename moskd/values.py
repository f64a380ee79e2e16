"""What a valid setting value is: number ranges and declared choices (both declared on the setting
itself, moskd.config.field), the nearest name when a value is misspelt, --device's syntax, and
--resume with --force. moskd.config applies these to flags and config files alike."""
from __future__ import annotations

import difflib
import math
import re
from typing import Any

from moskd.errors import MoskdError

# `StudentTrain --model N` numbers, as in the original project (the pipeline trains both); spelt here,
# torch-free, so config files can name them (moskd.models re-exports it)
SEED_STUDENTS = {"1": "densenet121", "2": "googlenet"}
SCHEDULERS = ("cosine", "step", "multistep", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0"}


def parse_range(spec: str) -> tuple:
    """A range as written on a field: ">=1", ">0", "[0,1]", "(0,1]", "[0,1)", "(0,1)" -> (low, high,
    low inclusive, high inclusive); high None = unbounded."""
    if spec.startswith(">"):
        return float(spec.lstrip(">=")), None, spec.startswith(">="), True
    low, high = spec[1:-1].split(",")
    return float(low), float(high), spec[0] == "[", spec[-1] == "]"


def out_of_range(spec: str | None, value: Any) -> str | None:
    """'must be ...' when a number (or any element of a list of numbers) lies outside `spec`."""
    if spec is None or value is None:
        return None
    low, high, low_in, high_in = parse_range(spec)
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # a type error, reported by the type check
        ok = (math.isfinite(v) and (v >= low if low_in else v > low)
              and (high is None or (v <= high if high_in else v < high)))
        if not ok:
            text = spec.replace(">=", ">= ").replace(">0", "> 0") if high is None else "in " + spec.replace(",", ", ")
            return f"{v}: must be {text}"
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


def check_values(values: dict[str, Any], choices: dict[str, tuple] | None = None,
                 ranges: dict[str, str] | None = None) -> None:
    """Refuse an out-of-range number, an unknown choice or --resume with --force: one MoskdError line
    naming the flag. `choices` maps a setting to (choices or a callable giving them, ignore case),
    `ranges` a setting to its range (parse_range)."""
    choices, ranges = choices or {}, ranges or {}
    for name, value in values.items():
        opts, ignore_case = choices.get(name, (None, False))
        problem = out_of_range(ranges.get(name), value) or not_a_choice(name, value, opts, ignore_case)
        if problem:
            raise MoskdError(f"--{name.replace('_', '-')} {problem}")
    if values.get("resume") and values.get("force"):
        raise MoskdError("--resume continues the run in the stage folder, --force starts it over: pass one of them")


def choices_of(cls: type) -> dict[str, tuple]:
    """(choices, ignore case) of every field of a config dataclass that declares them; a field a
    subclass redefines (a new default, say) keeps the choices its base class declared."""
    return {name: (meta["choices"], meta.get("ignore_case", False)) for name, meta in _declared(cls, "choices")}


def ranges_of(cls: type) -> dict[str, str]:
    """The range of every field of a config dataclass that declares one (kept by a redefinition too)."""
    return {name: meta["range"] for name, meta in _declared(cls, "range")}


def _declared(cls: type, key: str) -> list[tuple[str, dict]]:
    out: dict[str, dict] = {}
    for base in reversed(cls.__mro__):
        for f in getattr(base, "__dataclass_fields__", {}).values():
            if key in f.metadata:
                out[f.name] = f.metadata
    return list(out.items())


def timm_optimizers() -> list[str]:
    """The optimizer names timm's factory takes (imported only when a value must be checked)."""
    from timm.optim import list_optimizers

    return list_optimizers()
