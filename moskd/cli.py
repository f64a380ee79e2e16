"""`moskd`: one umbrella command with a subcommand per stage. It only dispatches.

    moskd teacher   ...   = teacherTrain ...
    moskd student   ...   = StudentTrain ...
    moskd selector  ...   = trainSelector ...
    moskd inference ...   = inference ...
    moskd report RUN      evaluation report of a finished run
    moskd sweep     ...   temperature/alpha/seed grid for one student
    moskd pipeline  ...   every stage in order on one run directory (--seeds 0 1 2: once per seed)
    moskd results         README and docs/RESULTS.md tables from the committed seed files
    moskd export    ...   a finished run as a deployment bundle (torch.export or ONNX)
    moskd serve     ...   HTTP prediction server for a bundle or a run (needs the serve extra)
    moskd clean RUN       drop optimizer state of finished stages (last.pt) to shrink a run
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # subcommand -> (module, what it does); modules are imported only when chosen
    "teacher": ("teacher.cli", "stage 1: train the teacher (teacherTrain)"),
    "student": ("students.cli", "stage 2: distil the teacher into a student (StudentTrain)"),
    "selector": ("selector.cli", "stage 3: label select images and train the selector (trainSelector)"),
    "inference": ("inference.cli", "stage 4: routed predictions for files, folders or a split (inference)"),
    "report": ("inference.report", "evaluation report of a run: report.json, report.md, plots"),
    "sweep": ("students.sweep", "grid of temperatures, alphas and seeds for one student"),
    "pipeline": ("moskd.pipeline", "teacher -> cache -> students -> selector -> report, skipping finished stages"),
    "results": ("moskd.results", "README and docs/RESULTS.md tables from docs/results/*/seeds.json"),
    "export": ("inference.export", "a finished run as a deployment bundle: manifest.json + one program per model"),
    "serve": ("inference.serve", "HTTP server: POST /predict, GET /health, GET /info (pip install -e '.[serve]')"),
    "clean": ("moskd.clean", "drop last.pt of finished stages and slim old best.pt files"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: moskd COMMAND [ARGS...]   (moskd COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        from moskd import __version__

        print(f"moskd {__version__}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"moskd: error: unknown command '{name}'; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    module.main(rest)


if __name__ == "__main__":
    main()
