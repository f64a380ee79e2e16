"""`moskd`: the umbrella command, one subcommand per command of the project. The top of the command layer.

    moskd teacher   ...   = teacherTrain ...
    moskd student   ...   = StudentTrain ...
    moskd selector  ...   = trainSelector ...
    moskd inference ...   = inference ...
    moskd report    ...   evaluation report of a finished run (--run-dir RUN)
    moskd policy    ...   fit the routing policy on select (RUN/policy.json), then the report
    moskd sweep     ...   temperature/alpha/seed grid for one student
    moskd export    ...   a finished run as a deployment bundle (torch.export or ONNX)
    moskd serve     ...   HTTP prediction server for a bundle or a run (needs the serve extra)
    moskd pipeline  ...   every stage in order on one run directory (--seeds 0 1 2: once per seed)
    moskd results         README and docs/RESULTS.md tables from the committed seed files
    moskd clean     ...   drop optimizer state of finished stages (last.pt) to shrink a run

COMMANDS below is the one list. The stage commands' parsers are torch-free and imported here; the
commands whose module loads torch at import are reached through a small function that imports it
only when the command runs, so `moskd --help` answers at once.
"""
from __future__ import annotations

import difflib
import sys
from typing import Callable

from inference.cli import export_main, main as inference_main, policy_main, report_main, serve_main
from moskd import __version__
from selector.cli import main as selector_main
from students.cli import main as student_main, sweep_main
from teacher.cli import main as teacher_main


def _pipeline(argv):
    from moskd.pipeline import main
    main(argv)


def _results(argv):
    from moskd.results import main
    main(argv)


def _clean(argv):
    from moskd.clean import main
    main(argv)


# name -> (what runs it, its one-line help), in the order `moskd --help` lists them
COMMANDS: dict[str, tuple[Callable, str]] = {
    "teacher": (teacher_main, "stage 1: train the teacher (teacherTrain)"),
    "student": (student_main, "stage 2: distil the teacher into a student (StudentTrain)"),
    "sweep": (sweep_main, "grid of temperatures, alphas and seeds for one student"),
    "selector": (selector_main, "stage 3: label select images and train the selector (trainSelector)"),
    "inference": (inference_main, "stage 4: routed predictions for files, folders or a split (inference)"),
    "report": (report_main, "evaluation report of a run: report.json, report.md, plots"),
    "policy": (policy_main, "fit the routing policy on select (RUN/policy.json) and rewrite the report"),
    "export": (export_main, "a finished run as a deployment bundle: manifest.json + one program per model"),
    "serve": (serve_main, "HTTP server: POST /predict, GET /health, GET /info (pip install -e '.[serve]')"),
    "pipeline": (_pipeline, "teacher -> cache -> students -> selector -> policy and report, skipping finished stages"),
    "results": (_results, "README and docs/RESULTS.md tables from docs/results/*/seeds.json"),
    "clean": (_clean, "drop last.pt of finished stages and slim old best.pt files"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: moskd COMMAND [ARGS...]   (moskd COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
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
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(f"moskd: error: unknown command '{name}'; {hint}choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[name][0](rest)


if __name__ == "__main__":
    main()
