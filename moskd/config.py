"""Typed stage configs: dataclass defaults < --config YAML < command-line flags.

Each stage declares a dataclass of its settings (units in the help text). This module turns it
into an argparse parser (``allow_abbrev=False``), type-checks YAML overrides against the field
types (nanoGPT-style), and writes the resolved config next to the run.

A YAML file may be flat (``epochs: 20``) or sectioned per stage so one file serves the whole
pipeline::

    dataset: digits          # shared keys at the top level
    teacher: {epochs: 20}    # read only by teacherTrain
    students: {epochs: 15}   # read only by StudentTrain
    selector: {epochs: 40}   # read only by trainSelector
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from moskd.errors import MoskdError

C = TypeVar("C")
STAGE_SECTIONS = ("teacher", "students", "selector", "inference", "pipeline")

# Valid ranges by setting name, for every command that has the setting (scikit-learn style: every
# entry point validates the same way): (low, high, low inclusive, high inclusive); None = unbounded.
RANGES: dict[str, tuple] = {
    "epochs": (1, None, True, True), "batch_size": (1, None, True, True), "eval_batch_size": (1, None, True, True),
    "limit": (1, None, True, True), "train_limit": (1, None, True, True), "image_size": (1, None, True, True),
    "warmup_epochs": (0, None, True, True), "lr": (0, None, False, True), "min_lr": (0, None, True, True),
    "weight_decay": (0, None, True, True), "momentum": (0, 1, True, False), "lr_decay": (0, 1, False, True),
    "label_smoothing": (0, 1, True, False), "ema_decay": (0, 1, True, False),
    "select_fraction": (0, 1, False, False), "test_fraction": (0, 1, False, False),
    "alpha": (0, 1, True, True), "temperature": (0, None, False, True), "teacher_cache": (0, None, True, True),
    "width": (1, None, True, True), "dropout": (0, 1, True, False), "holdout_fraction": (0, 1, False, False),
    "tie_margin": (0, None, True, True), "escalate": (0, None, True, True),
}
SCHEDULERS = ("cosine", "step", "multistep", "linear", "constant")


def _range_text(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_ranges(cfg: Any) -> None:
    """Refuse any out-of-range number and unknown optimizer or scheduler name: one line, the flag named."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name in RANGES and value is not None:
            low, high, low_in, high_in = RANGES[f.name]
            ok = (math.isfinite(value) and (value >= low if low_in else value > low)
                  and (high is None or (value <= high if high_in else value < high)))
            if not ok:
                raise MoskdError(f"{flag} {value}: must be {_range_text(low, high, low_in, high_in)}")
    if hasattr(cfg, "scheduler") and cfg.scheduler not in SCHEDULERS:
        raise MoskdError(f"--scheduler {cfg.scheduler}: choose one of {', '.join(SCHEDULERS)}")
    if hasattr(cfg, "optimizer"):
        from timm.optim import list_optimizers

        known = list_optimizers()
        if cfg.optimizer.lower() not in known:
            close = difflib.get_close_matches(cfg.optimizer.lower(), known, n=1)
            hint = f"did you mean {close[0]}?" if close else "e.g. adamw, sgd, momentum, adam"
            raise MoskdError(f"--optimizer {cfg.optimizer}: not an optimizer timm knows; {hint}")
    if getattr(cfg, "resume", False) and getattr(cfg, "force", False):
        raise MoskdError("--resume continues the run in the stage folder, --force starts it over: pass one of them")


def field(default: Any, help: str, **kw) -> Any:
    """A config field with its help text (the flag's --help line)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X``, ``Optional[X]`` and ``X | None``."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def _check_value(name: str, value: Any, tp: Any, source: str) -> Any:
    inner, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise MoskdError(f"{source}: '{name}' may not be null")
    origin = typing.get_origin(inner)
    if origin in (list, Sequence):
        (elem,) = typing.get_args(inner) or (Any,)
        if not isinstance(value, list):
            value = [value]
        return [_check_value(name, v, elem, source) for v in value]
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner is Any or isinstance(value, inner) and not (inner is int and isinstance(value, bool)):
        return value
    raise MoskdError(
        f"{source}: '{name}' must be {getattr(inner, '__name__', inner)}, got {value!r}; fix the value in the file"
    )


def load_yaml_overrides(cls: type, path: str, section: str) -> dict[str, Any]:
    """Read a flat or sectioned YAML file; return the type-checked values this stage knows."""
    p = Path(path)
    if not p.is_file():
        raise MoskdError(f"config file {path} not found; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise MoskdError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    if not isinstance(raw, dict):
        raise MoskdError(f"config file {path} must hold a mapping of setting: value")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    merged = {k: v for k, v in raw.items() if k not in STAGE_SECTIONS}
    own = raw.get(section) or {}
    if not isinstance(own, dict):
        raise MoskdError(f"config file {path}: section '{section}' must be a mapping")
    merged.update(own)
    for key, value in merged.items():
        name = key.replace("-", "_")
        if name not in fields:
            if key in own:
                raise MoskdError(
                    f"config file {path}: unknown setting '{key}' for {section}; valid: {', '.join(sorted(fields))}"
                )
            # a shared top-level key another stage uses (e.g. 'temperature' read by students only)
            continue
        values[name] = _check_value(name, value, hints[name], f"config file {path}")
    return values


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: an unknown flag gets the nearest known one, not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1) if word.startswith("-") else []
                hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
            message = f"unrecognized arguments: {' '.join(hints)}"
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML defaults (flat, or sectioned per stage: teacher/students/selector/inference/"
                             "pipeline); flags given here override them")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        inner, optional = _base_type(hints[f.name])
        meta = dict(f.metadata)
        help_text = meta.pop("help", "")
        extra_flags = meta.pop("flags", ())
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kw: dict[str, Any] = {"dest": f.name, "help": help_text, "default": default, **meta}
        if inner is bool:
            action = "store_true" if f.name.startswith("no_") or f.name in ("resume", "force", "download") else argparse.BooleanOptionalAction
            parser.add_argument(flag, *extra_flags, action=action, **kw)
            continue
        origin = typing.get_origin(inner)
        if origin in (list, Sequence):
            (elem,) = typing.get_args(inner)
            parser.add_argument(flag, *extra_flags, nargs="+", type=elem, **kw)
        else:
            parser.add_argument(flag, *extra_flags, type=inner, **kw)
    return parser


def parse_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str, section: str) -> C:
    """Dataclass defaults, then --config YAML, then flags; returns a type-checked instance."""
    parser = build_parser(cls, prog, description)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_yaml_overrides(cls, pre.config, section))
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    cfg = cls(**values)
    check_ranges(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def write_config(cfg: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
