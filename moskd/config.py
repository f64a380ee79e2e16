"""Typed command configs and the one parser every moskd command uses.

Each command declares a dataclass of its settings (units in the help text): defaults < --config
YAML < command-line flags. This module turns the dataclass into a `Parser` (no abbreviations,
one-line errors with the nearest flag, every value checked by moskd.values), type-checks YAML
values against the field types (nanoGPT-style), and writes the resolved config next to the run.

A YAML file may be flat (``epochs: 20``) or sectioned per command so one file serves the whole
pipeline::

    dataset: digits          # shared keys at the top level: read by every command that has them
    teacher: {epochs: 20}    # read only by teacherTrain
    students: {epochs: 15}   # read only by StudentTrain (and moskd sweep)
    selector: {epochs: 40}   # read only by trainSelector

A section whose command declares ``PER_MODEL`` (StudentTrain: `PerModel`) also takes a ``models``
mapping of per-architecture overrides, applied over the section for the model the command trains
(command-line flags still win)::

    students:
      epochs: 5
      models:
        googlenet: {epochs: 12, lr: 0.002}
        densenet121: {epochs: 4, batch_size: 256}

The whole file is checked whichever command reads it: a top-level key no command knows, an
unknown section, or an unknown key inside a section is an error naming the nearest known one.
Which sections exist is the command layer's knowledge (moskd.sections.SECTIONS, passed in here as
`sections`); this module names no command. It loads no torch, so --help is instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from moskd.atomic import write_text
from moskd.errors import MoskdError
from moskd.values import (
    check_values, choices_of, nearest, not_a_choice, out_of_range, ranges_of)
from moskd.per_model import MODELS_KEY, check_models, per_model

C = TypeVar("C")

Sections = dict[str, type]  # YAML section -> the config dataclass that reads it (moskd.sections.SECTIONS)


def field(default: Any, help: str, **kw) -> Any:
    """A config field with its help text (the flag's --help line) and what a valid value is:
    `range=">=1"` (or ">0", "[0,1]", "(0,1]", ...; moskd.values.parse_range), `choices=` (a list, or
    a callable read when a value is checked), `ignore_case=`; other keywords go to argparse."""
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


def read_yaml(path: str) -> dict[str, Any]:
    """A config file's mapping; one line if it is missing, not YAML or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise MoskdError(f"config file {path} not found; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise MoskdError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    if not isinstance(raw, dict):
        raise MoskdError(f"config file {path} must hold a mapping of setting: value")
    return raw


def _key(key: Any) -> str:
    return str(key).replace("-", "_")  # batch-size and batch_size name the same setting


def _check_entry(name: str, value: Any, classes: list[type], path: str, section: str | None = None) -> None:
    """Type, range and choices of one file entry, against every config class that has the setting."""
    where = f"config file {path}" + (f": section '{section}'" if section else "")
    label = f"config file {path}: {section + '.' if section else ''}{name}"
    for cls in classes:
        value = _check_value(name, value, typing.get_type_hints(cls)[name], where)
        opts, ignore_case = choices_of(cls).get(name, (None, False))
        problem = out_of_range(ranges_of(cls).get(name), value) or not_a_choice(name, value, opts, ignore_case)
        if problem:
            raise MoskdError(f"{label} {problem}; fix the value in the file")


def check_file(raw: dict[str, Any], path: str, sections: dict[str, type]) -> None:
    """The whole file against every command's settings, whichever command reads it: an unknown or
    misspelt key or section anywhere is an error naming it and the nearest known one, and so is a
    bad value in another stage's section (found now, not hours later when that stage starts)."""
    fields = {s: {f.name for f in dataclasses.fields(c)} for s, c in sections.items()}
    union = set().union(*fields.values())
    for key, value in raw.items():
        name = _key(key)
        if name in sections:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise MoskdError(f"config file {path}: section '{key}' must be a mapping of setting: value")
            for k, v in value.items():
                spec = per_model(sections[name])
                if _key(k) == MODELS_KEY and spec is not None:
                    check_models(v, path, str(key), sections[name], spec, _check_entry)
                    continue
                if _key(k) not in fields[name]:
                    raise MoskdError(f"config file {path}: unknown setting '{k}' in section '{key}'"
                                     f"{nearest(_key(k), fields[name])}")
                _check_entry(_key(k), v, [sections[name]], path, str(key))
        elif name in union:
            _check_entry(name, value, [c for s, c in sections.items() if name in fields[s]], path)
        else:
            raise MoskdError(f"config file {path}: unknown setting or section '{key}'"
                             f"{nearest(name, union | set(sections))} (sections: {', '.join(sections)})")


def load_yaml_overrides(cls: type, path: str, section: str | Sequence[str], sections: Sections,
                        model: Any = None, with_models: bool = True) -> dict[str, Any]:
    """Read a flat or sectioned YAML file, check all of it (check_file), and return the type-checked
    values this command knows: top-level settings, then its own section(s) over them, then (when
    the command declares PER_MODEL and `with_models`) the section's ``models`` entry for `model`
    (default: the model the file or the command's default names)."""
    raw = read_yaml(path)
    check_file(raw, path, sections)
    own = [section] if isinstance(section, str) else list(section)
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    spec = per_model(cls)
    merged = {_key(k): v for k, v in raw.items() if _key(k) not in sections and _key(k) in fields}
    entries: dict[str, Any] = {}
    for s in own:
        for k, v in (raw.get(s) or {}).items():
            if _key(k) == MODELS_KEY and spec is not None:
                entries.update({str(a): e for a, e in (v or {}).items()})
            else:
                merged[_key(k)] = v
    if spec is not None and with_models:
        if model is None:
            model = merged.get(spec.selector, spec.default(cls))
        merged.update({_key(k): v for k, v in (entries.get(spec.arch(model)) or {}).items()})
    for name in merged:
        if name not in fields:  # a sweep key in the students section read by StudentTrain, say
            raise MoskdError(f"config file {path}: '{name}' is not a setting of this command "
                             f"(valid: {', '.join(sorted(fields))})")
    return {name: _check_value(name, v, hints[name], f"config file {path}") for name, v in merged.items()}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks; no "(default: None)" after a help that
    says its default in words, nor after an unset flag."""

    def _get_help_string(self, action):
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The parser of every moskd command: no abbreviations, one-line errors (an unknown flag or
    choice gets the nearest known one, not the usage block), and every value checked by name
    (declared ranges and choices, --device, --resume with --force) before the command does anything.
    `add_argument(..., range=">=1")` declares a hand-made flag's range as `field(range=...)` does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.value_choices: dict[str, tuple] = {}  # dest -> (choices or a callable giving them, ignore case)
        self.value_ranges: dict[str, str] = {}  # dest -> range (moskd.values.parse_range)

    def add_argument(self, *args, **kwargs):
        spec = kwargs.pop("range", None)
        action = super().add_argument(*args, **kwargs)
        if spec is not None:
            self.value_ranges[action.dest] = spec
        return action

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        try:
            check_values(vars(ns), self.value_choices, self.value_ranges)
        except MoskdError as e:
            self.error(str(e))
        return ns

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1) if word.startswith("-") else []
                hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
            message = f"unrecognized arguments: {' '.join(hints)}"
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if bad:
            message += nearest(bad.group(1), re.findall(r"'([^']*)'", bad.group(2)) or bad.group(2).split(", "))
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(cls: type, prog: str, description: str, sections: Sections) -> Parser:
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help=f"YAML defaults (flat, or sectioned per command: {'/'.join(sections)}); "
                             f"flags given here override them; unknown keys are refused")
    hints = typing.get_type_hints(cls)
    declared = choices_of(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        inner, optional = _base_type(hints[f.name])
        meta = dict(f.metadata)
        help_text = meta.pop("help", "")
        extra_flags = meta.pop("flags", ())
        meta.pop("ignore_case", None)
        meta.pop("choices", None)
        if "range" in meta:
            parser.value_ranges[f.name] = meta.pop("range")
        choices = declared.get(f.name, (None,))[0]
        if choices is not None:  # checked by Parser.parse_args, the same way as a value from YAML
            parser.value_choices[f.name] = declared[f.name]
            if not callable(choices):
                meta.setdefault("metavar", "{" + ",".join(map(str, choices)) + "}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kw: dict[str, Any] = {"dest": f.name, "help": help_text, "default": default, **meta}
        if inner is bool:
            action = "store_true" if f.name.startswith("no_") or f.name in ("resume", "force", "download", "quiet") else argparse.BooleanOptionalAction
            parser.add_argument(flag, *extra_flags, action=action, **kw)
            continue
        origin = typing.get_origin(inner)
        if origin in (list, Sequence):
            (elem,) = typing.get_args(inner)
            parser.add_argument(flag, *extra_flags, nargs="+", type=elem, **kw)
        else:
            parser.add_argument(flag, *extra_flags, type=inner, **kw)
    return parser


def parse_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str,
                 section: str | Sequence[str], sections: Sections) -> C:
    """Dataclass defaults, then --config YAML, then flags; returns a checked instance."""
    args = parse_namespace(cls, argv, section, build_parser(cls, prog, description, sections), sections)
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parse_namespace(cls: type, argv: Sequence[str] | None, section: str | Sequence[str],
                    parser: Parser, sections: Sections) -> argparse.Namespace:
    """parse_config's work for a parser (build_parser(cls, ...) with extra arguments, e.g.
    positional inputs): the whole namespace."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        spec = per_model(cls)
        parser.set_defaults(**load_yaml_overrides(cls, pre.config, section, sections, with_models=spec is None))
        if spec is not None:  # the model this run trains (flag > file > default) picks its overrides
            model = getattr(parser.parse_known_args(argv)[0], spec.selector)
            parser.set_defaults(**load_yaml_overrides(cls, pre.config, section, sections, model=model))
    return parser.parse_args(argv)  # checks every value, from the file or a flag


def resolve_config(cls: type[C], path: str | None, section: str | Sequence[str], sections: Sections,
                   **overrides: Any) -> C:
    """What parse_config gives for `--config path` plus flags, built from values instead of argv
    (moskd pipeline calls the stages this way): defaults < file (its per-model entry for the model
    the overrides or the file name) < overrides, every value checked as a flag's would be."""
    values = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
              for f in dataclasses.fields(cls)}
    if path:
        values.update(load_yaml_overrides(cls, path, section, sections, with_models=False))
        spec = per_model(cls)
        if spec is not None:
            model = overrides.get(spec.selector, values[spec.selector])
            values.update(load_yaml_overrides(cls, path, section, sections, model=model))
    values.update(overrides)
    check_values(values, choices_of(cls), ranges_of(cls))
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def write_config(cfg: Any, path: Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run_dir_argument(positional: str | None, option: str | None, default: str | None = None) -> str:
    """The run directory of a command that takes it as --run-dir RUN (every command) or, for older
    scripts, as a positional RUN: one of them, not two different ones."""
    if positional and option and Path(positional) != Path(option):
        raise MoskdError(f"two run directories given ({positional} and --run-dir {option}); pass one, as --run-dir RUN")
    chosen = option or positional or default
    if chosen is None:
        raise MoskdError("no run directory given; pass --run-dir RUN")
    return chosen
