"""`moskd`: one umbrella command with a subcommand per stage command. It only dispatches.

    moskd teacher   ...   = teacherTrain ...
    moskd student   ...   = StudentTrain ...
    moskd selector  ...   = trainSelector ...
    moskd inference ...   = inference ...
    moskd report    ...   evaluation report of a finished run (--run-dir RUN)
    moskd sweep     ...   temperature/alpha/seed grid for one student
    moskd export    ...   a finished run as a deployment bundle (torch.export or ONNX)
    moskd serve     ...   HTTP prediction server for a bundle or a run (needs the serve extra)
    moskd pipeline  ...   every stage in order on one run directory (--seeds 0 1 2: once per seed)
    moskd results         README and docs/RESULTS.md tables from the committed seed files
    moskd clean     ...   drop optimizer state of finished stages (last.pt) to shrink a run

The stage commands come from what the four stages declare in their stage.py, listed once below
(STAGES: the umbrella may name the stages; the rest of the core reads them through
moskd.stages.stages()); the last three are the core's own. A command's module is imported only
when it is chosen, so `moskd --help` is instant.
"""
from __future__ import annotations

import difflib
import importlib
import sys

from inference.stage import STAGE as INFERENCE
from moskd import __version__
from moskd.stages import Command, commands
from selector.stage import STAGE as SELECTOR
from students.stage import STAGE as STUDENTS
from teacher.stage import STAGE as TEACHER_STAGE

STAGES = (TEACHER_STAGE, STUDENTS, SELECTOR, INFERENCE)  # every stage, in pipeline order: the one list

CORE_COMMANDS = (
    Command("pipeline", "moskd.pipeline",
            "teacher -> cache -> students -> selector -> report, skipping finished stages"),
    Command("results", "moskd.results", "README and docs/RESULTS.md tables from docs/results/*/seeds.json"),
    Command("clean", "moskd.clean", "drop last.pt of finished stages and slim old best.pt files"),
)


def all_commands() -> dict[str, Command]:
    return {**commands(), **{c.name: c for c in CORE_COMMANDS}}


def usage() -> str:
    table = all_commands()
    width = max(map(len, table))
    lines = ["usage: moskd COMMAND [ARGS...]   (moskd COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in table.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        print(f"moskd {__version__}")
        return
    name, rest = argv[0], argv[1:]
    table = all_commands()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(f"moskd: error: unknown command '{name}'; {hint}choose one of {', '.join(table)}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(table[name].module)
    module.main(rest)


if __name__ == "__main__":
    main()
