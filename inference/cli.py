"""inference: routed predictions for image files and folders, or the evaluation report of a run.

    inference --run-dir RUN img.png photos/ [--output preds.csv|preds.jsonl|-]
    inference --bundle DIR img.png photos/ [--output ...]      (an exported bundle: moskd export)
    inference --run-dir RUN --split test [--dataset NAME]      (writes RUN/report.json, report.md, plots)

Folders are searched recursively for files with an image extension; files named explicitly are
always tried. Preprocessing follows the model card: grayscale, RGB, RGBA and palette images are
converted to the card's channels (transparency is flattened onto white), resized to the training
size and normalised with the card's mean/std. Digits models were trained on bright ink over a
dark background, so for them a light-background image (scanned paper, a drawing) is inverted
first (--invert auto).

Output, one row per input in input order (a folder: one row per image found in it):
  path, class_index, class_name,
  probability         probability of the predicted class in the answer (the answering model's
                      softmax, or a committee's mean probabilities)
  student             the model that answered last: a student's name, or `teacher` when escalated
  p_right_<student>   the selector's calibrated estimate (Platt-scaled sigmoid) that <student>
                      classifies this image correctly (0 when the routing policy does not start
                      with the selector)
Every input is decided by the run's routing policy (RUN/policy.json, fitted on `select` by
`moskd policy`; a bundle carries it in its manifest): where an image starts (the selector's pick,
or a fixed first model), when it goes on to the next model, and how answers combine.
  error               why the input could not be predicted (unreadable, truncated, not an image,
                      a folder without images); empty when it was
--output FILE.csv or FILE.jsonl writes the rows to a file as they are predicted (flushed after
every batch, so an interrupted job keeps its rows; --resume continues it), --output - to stdout (CSV
unless --output-format jsonl). Inputs are listed and decoded as they are reached (--workers N
processes), so memory stays flat in the number of files. The human-readable table goes to stderr
(past a screenful of rows, a summary instead), or nowhere with --quiet (then each failed input
gets one line on stderr instead). The exit code is 2 when any input failed (its row is still
written) and for bad flags.
"""
from __future__ import annotations

from moskd.config import run_dir_argument
from moskd.errors import MoskdError, cli_entry
from moskd.sections import build_parser, parse_config, parse_namespace
from inference.config import InferenceConfig, PolicyConfig, ReportConfig, ServeConfig

PROG = "inference"


def parse_args(argv) -> tuple[InferenceConfig, list[str]]:
    """Dataclass defaults < --config YAML (section `inference`) < flags; plus positional inputs."""
    parser = build_parser(InferenceConfig, PROG, __doc__)
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    args = parse_namespace(InferenceConfig, argv, "inference", parser)
    cfg = InferenceConfig(**{k: getattr(args, k) for k in InferenceConfig.__dataclass_fields__})
    return cfg, list(args.inputs)


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then predict or evaluate."""
    cfg, inputs = parse_args(argv)
    from inference.predict import run

    return run(cfg, inputs, PROG)



REPORT_DOC = """`moskd report`: evaluate a run and write RUN/report.json, report.md, plots/ and eval/<split>.npz.

    moskd report --run-dir RUN [--from-eval] [--limit N]     (also: inference --run-dir RUN --split test)

Every model and the selector run alone over `select`, `test` and `spare` (when the run has one);
the run's routing policy (RUN/policy.json) then runs for real on `test`. On a run with no policy
yet, the policy step (`moskd policy`) runs first and says so; an existing policy.json is never
changed (--refit fits it again). With --limit N everything goes to RUN/report-limit<N>/, beside
the full report. --from-eval rebuilds the report from RUN/eval/*.npz without running a model.
Choices are made on `select`, never on `test`.
"""
POLICY_DOC = '`moskd policy`: fit the run\'s routing policy on `select` and write RUN/policy.json, then the report.\n\n    moskd policy --run-dir RUN [--from-eval] [--target teacher|best-student|ACC] [--budget-macs M]\n\nEvery family (the selector alone, max-softmax cascades, the selector\'s pick then deferral, learned\ndeferral, and each with committee answers) is scored on the selector\'s held-out `select` images;\nlearned deferral rules learn on `spare` (or the rest of `select`). The deployed point is the\nfewest MACs whose `select` accuracy reaches the target\'s (default: the teacher\'s), else the most\naccurate; --budget-macs M takes the most accurate within M MACs per image instead. `inference`,\n`moskd export`, `moskd serve` and the report all decide through the file this writes.\nWith --from-eval it refits from RUN/eval/*.npz in seconds, without running a model.\n"""\n'


def _report_config(cls: type, argv, prog: str, doc: str):
    """A ReportConfig/PolicyConfig from --config and flags, plus the older positional RUN."""
    parser = build_parser(cls, prog, doc)
    parser.add_argument("run", metavar="RUN", nargs="?", help="the run directory, as --run-dir RUN (kept for older scripts)")
    args = parse_namespace(cls, argv, prog.split()[-1], parser)
    cfg = cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})
    cfg.run_dir = run_dir_argument(args.run, cfg.run_dir, default="runs/digits")
    return cfg


@cli_entry("moskd report")
def report_main(argv=None):
    cfg = _report_config(ReportConfig, argv, "moskd report", REPORT_DOC)
    from inference.report import report_command

    report_command(cfg, cfg.refit)


@cli_entry("moskd policy")
def policy_main(argv=None):
    cfg = _report_config(PolicyConfig, argv, "moskd policy", POLICY_DOC)
    from inference.report import report_command

    report_command(cfg, refit=True)


SERVE_DOC = """`moskd serve`: an HTTP prediction server (FastAPI behind uvicorn) for a bundle or a run
(inference.serve has the API: POST /predict, GET /health, GET /info; --backend ray: inference.serve_ray).
Needs the serve extra: pip install -e '.[serve]'.
"""


def check_serve(cfg: ServeConfig) -> None:
    if (cfg.bundle is None) == (cfg.run_dir is None):
        raise MoskdError("pass one of --bundle DIR (an exported bundle) or --run-dir RUN")
    if cfg.backend == "local" and cfg.replicas != 1:
        raise MoskdError("--replicas needs --backend ray (the local server is one process)")
    if cfg.backend == "ray" and cfg.bundle is None:
        raise MoskdError("--backend ray serves a bundle: pass --bundle DIR (moskd export --run-dir RUN --out DIR)")


@cli_entry("moskd serve")
def serve_main(argv=None):
    cfg = parse_config(ServeConfig, argv, "moskd serve", SERVE_DOC, section="serve")
    check_serve(cfg)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MoskdError(f"moskd serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    if cfg.backend == "ray":
        try:
            from inference.serve_ray import serve_main as serve_on_ray
        except ImportError as e:
            raise MoskdError(f"--backend ray needs the ray extra ({e.name} is missing): pip install -e '.[ray]'") from None
        return serve_on_ray(cfg)
    from inference.serve import serve_local

    return serve_local(cfg)


if __name__ == "__main__":
    main()
