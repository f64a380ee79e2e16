"""What the stages declare to the core: their commands, their pipeline steps, their model modules.

Each stage package (teacher/, students/, selector/, inference/) declares one
`STAGE = StageInfo(...)` in its `stage.py`. The four are listed once, in moskd.cli (STAGES), the
umbrella command that dispatches to them; the rest of the core (the pipeline, the model registry,
the config sections) reads them through `stages()` here and imports no stage itself. A declaration
imports nothing heavy (no torch), so `moskd --help` answers at once; a command's module is
imported only when it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from moskd.run import RunDir


@dataclass(frozen=True)
class Command:
    """A `moskd` subcommand: `module.main(argv)` runs it."""
    name: str
    module: str
    help: str


@dataclass(frozen=True)
class Step:
    """One step of `moskd pipeline`.

    kind "train": gets the pipeline's data, device, seed, recipe and epoch flags; it is skipped when
    `out` holds a finished stage (summary.json) and resumed when it holds only last.pt (out None:
    always run). kind "report": gets the run directory, device and --limit only.
    """
    title: str
    module: str
    argv: tuple[str, ...] = ()
    out: Optional[Path] = None
    kind: str = "train"


@dataclass(frozen=True)
class StageInfo:
    name: str
    order: int  # position in the pipeline: a stage reads only what lower orders wrote
    commands: tuple[Command, ...] = ()
    models: tuple[str, ...] = ()  # modules registering models (moskd.models.register_model) on import
    sections: tuple[tuple[str, str], ...] = ()  # (YAML section, "module:ConfigClass" that reads it)
    steps: Optional[Callable[[RunDir, dict], list[Step]]] = field(default=None, compare=False)
    # steps(run, options): what `moskd pipeline` runs for this stage, in order; options are the
    # pipeline's settings (e.g. baselines, complementary), each stage reads the ones it knows


@lru_cache(maxsize=None)
def stages() -> tuple[StageInfo, ...]:
    """Every stage, in pipeline order: the umbrella's list (moskd.cli imports this module, so the
    list is read when first asked for, not at import)."""
    from moskd.cli import STAGES

    return tuple(sorted(STAGES, key=lambda s: s.order))


def commands() -> dict[str, Command]:
    return {c.name: c for s in stages() for c in s.commands}


def config_sections() -> dict[str, str]:
    """YAML section -> "module:Class" of the config dataclass that reads it, from every stage."""
    return {name: target for s in stages() for name, target in s.sections}


def model_modules() -> list[str]:
    return [m for s in stages() for m in s.models]


def pipeline_steps(run: RunDir, options: Optional[dict] = None) -> list[Step]:
    options = {"baselines": True, **(options or {})}
    return [step for s in stages() if s.steps is not None for step in s.steps(run, options)]
