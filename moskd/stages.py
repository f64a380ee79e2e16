"""What the stages declare to the core: their commands, their pipeline steps, their model modules.

moskd (the core) imports no stage. Each stage package (teacher/, students/, selector/,
inference/) declares one `STAGE = StageInfo(...)` in its `stage.py`, listed in pyproject.toml
under `[project.entry-points."moskd.stages"]`; the umbrella CLI (`moskd COMMAND`),
`moskd pipeline` and the model registry read the stages from there. A declaration imports nothing
heavy (no torch), so `moskd --help` answers at once; a command's module is imported only when it runs.

The list comes from the checkout's pyproject.toml when moskd runs from a source tree (so a stage
added there is seen without reinstalling), else from the installed package's entry points.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from moskd.run import RunDir

GROUP = "moskd.stages"


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


def _from_pyproject() -> Optional[list[str]]:
    """The entry points of GROUP in the checkout's pyproject.toml, when moskd runs from one."""
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: the table is plain `name = "module"` lines
        text = path.read_text()
        if not re.search(r'^name\s*=\s*"moskd"', text, flags=re.M):
            return None
        block = re.search(rf'^\[project\.entry-points\."{re.escape(GROUP)}"\]\n(.*?)(?=^\[|\Z)', text, re.M | re.S)
        return re.findall(r'^\s*\w+\s*=\s*"([^"]+)"', block.group(1), flags=re.M) if block else []
    data = tomllib.loads(path.read_text())
    project = data.get("project", {})
    if project.get("name") != "moskd":
        return None
    return list(project.get("entry-points", {}).get(GROUP, {}).values())


def stage_modules() -> list[str]:
    """The declared stages (entry point values, e.g. "teacher.stage:STAGE")."""
    found = _from_pyproject()
    if found is None:
        from importlib.metadata import entry_points

        found = [ep.value for ep in entry_points(group=GROUP)]
    return found


@lru_cache(maxsize=None)
def stages() -> tuple[StageInfo, ...]:
    """Every declared stage, in pipeline order."""
    infos = []
    for value in stage_modules():
        module, _, attr = value.partition(":")
        info = getattr(importlib.import_module(module), attr or "STAGE")
        if not isinstance(info, StageInfo):
            raise TypeError(f"{value}: declares {type(info).__name__}, not a moskd.stages.StageInfo")
        infos.append(info)
    return tuple(sorted(infos, key=lambda s: s.order))


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
