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
processes), and each model runs its routed sub-batch in power-of-two chunks (37 images = 32 + 4 + 1:
at most 9 batch shapes per model at --batch-size 256, where sub-batches of every size would grow
the allocators), so memory stays flat in the number of files. The human-readable table goes to stderr
(past a screenful of rows, a summary instead), or nowhere with --quiet (then each failed input
gets one line on stderr instead). The exit code is 2 when any input failed (its row is still
written) and for bad flags.
"""
from __future__ import annotations

from moskd.config import run_dir_argument
from moskd.errors import MoskdError, cli_entry
from moskd.sections import build_parser, parse_config, parse_namespace
from inference.config import ExportConfig, InferenceConfig, PolicyConfig, ReportConfig, ServeConfig

PROG = "inference"


def parse_args(argv) -> tuple[InferenceConfig, list[str]]:
    """Dataclass defaults < --config YAML (section `inference`) < flags; plus positional inputs."""
    parser = build_parser(InferenceConfig, PROG, __doc__)
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    args = parse_namespace(InferenceConfig, argv, "inference", parser)
    cfg = InferenceConfig(**{k: getattr(args, k) for k in InferenceConfig.__dataclass_fields__})
    return cfg, list(args.inputs)


def check_inference(cfg: InferenceConfig, inputs: list[str]) -> bool:
    """The combinations `inference` refuses, one line each; whether it evaluates (--split/--dataset)."""
    evaluating = cfg.split is not None or cfg.dataset is not None
    problems = [
        (inputs and evaluating, "give image files/folders or --split test (evaluation), not both"),
        (not inputs and not evaluating, "nothing to predict; pass image files or folders, or --split test to "
                                        "evaluate the run"),
        (evaluating and cfg.bundle is not None, "--split evaluates a run directory; pass --run-dir RUN (a bundle "
                                                "predicts image files)"),
        (evaluating and cfg.output is not None, "--output writes file predictions; the evaluation writes "
                                                "RUN/report.json instead")]
    for bad, why in problems:
        if bad:
            raise MoskdError(why)
    return evaluating


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then evaluate the run or predict files."""
    cfg, inputs = parse_args(argv)
    if check_inference(cfg, inputs):
        from inference.report import evaluate_command

        return evaluate_command(cfg)
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



EXPORT_DOC = '`moskd export`: a finished run as a deployment bundle (DESIGN.md, "Deployment bundle").\n\nIt lives in the inference stage, not in moskd, because it exports the stage-4 router (moskd\nimports no stage).\n\n    moskd export --run-dir RUN --out DIR [--format torch|onnx] [--fast fold|eager]\n    moskd export --run-dir RUN --out DIR --quantize int8 [--calib N] [--report]\n    moskd export --run-dir RUN --out DIR --runtime auto|ort|openvino --precision auto|fp32|bf16|int8 [--report]\n    moskd export --retune DIR [--runtime ...] [--precision ...]\n\nWrites DIR/manifest.json (class names, input size, mean/std, each model\'s file, MACs and\nparameters, and the run\'s routing policy, RUN/policy.json, verbatim under "policy") and one file\nper model the policy can run: the selector when it starts there (with its sigmoid, so it answers\nscores in [0, 1]), the students, and the teacher when a deferral step reaches it. Each model is exported on its own with a dynamic batch size,\nas a `torch.export` program (`.pt2`, torch.export.save) or as ONNX (`.onnx`, the dynamo-based\ntorch.onnx exporter); the routing stays in inference/bundle.py, a small host runtime that reads\nthe manifest. Models get the selector card\'s normalisation baked in (as the run\'s router does) and\ntheir Conv+BN pairs folded (--fast fold, the default); each exported program is checked against\nthe eager model on a random batch before the manifest is written, and the largest difference is\nrecorded in the manifest. The manifest is written last, so a half-written bundle never loads.\n\n--runtime/--precision (inference/tune.py) choose each ONNX model\'s runtime (onnxruntime or OpenVINO)\nand precision (fp32, bf16, int8) on this host by measurement, per batch regime, within --int8-bound\npoints on `select`, never slower than onnxruntime fp32; the bundle keeps the fp32 and int8 files, the\nmanifest the figures; --retune re-times an exported bundle on another host. The bundle folder is\nswapped in whole (moskd.atomic.swap_folder): a kill leaves the old bundle or the new one.\n\n--quantize int8 (inference/quantize.py) replaces each ONNX model by its static int8 graph where that\nis faster and within --int8-bound points on `select`, then refits the routing policy\'s deferral\nthresholds on the deployed models\' `select` outputs (same rule, same choosing images and target as\nthe run\'s fit; the manifest keeps both); --report adds the int8-against-fp32\ncomparison to the bundle (inference/int8_report.py): int8_report.md (per model and for the routed\nsystem: test and select accuracy of both with a paired-bootstrap CI, bytes, latency at batch 1 and\n64 timed side by side, the compression table\'s fp32 and int8 rows), int8_report.json, and the\nper-image outputs int8_eval_{select,test}.npz.\n'


def check_export(a: ExportConfig) -> ExportConfig:
    """The combinations `moskd export` refuses, one line each; the defaults that follow from the flags."""
    tuned = a.runtime is not None or a.precision is not None
    if a.retune:
        if a.run_dir or a.out or a.quantize or a.report or a.force:
            raise MoskdError("--retune BUNDLE takes only --runtime and --precision (it rewrites that bundle's manifest)")
        a.runtime, a.precision = a.runtime or "auto", a.precision or "auto"
        return a
    problems = [
        (not a.run_dir or not a.out, "--run-dir and --out are required (or --retune BUNDLE)"),
        (tuned and a.quantize, "--quantize int8 is the onnxruntime-only int8 export; with --runtime/--precision "
                               "pass --precision int8 or auto instead"),
        (tuned and a.format == "torch", "--runtime/--precision choose among ONNX runtimes; drop --format torch"),
        (a.report and not (a.quantize or tuned), "--report compares the bundle with fp32: it goes with --quantize "
                                                 "int8 or --runtime/--precision"),
        (a.format == "torch" and a.quantize, "--quantize int8 writes ONNX models; drop --format torch or pass "
                                             "--format onnx"),
        (a.calib is not None and not (a.quantize or tuned), "--calib goes with --quantize int8 or --precision "
                                                            "auto|int8")]
    for bad, why in problems:
        if bad:
            raise MoskdError(why)
    if tuned:
        a.runtime, a.precision, a.format = a.runtime or "auto", a.precision or "auto", "onnx"
    a.format = a.format or ("onnx" if a.quantize else "torch")
    return a


@cli_entry("moskd export")
def export_main(argv=None):
    cfg = check_export(parse_config(ExportConfig, argv, "moskd export", EXPORT_DOC, section="export"))
    from inference.export import export_command
    from inference.quantize import check_calib

    if cfg.calib is not None:
        cfg.calib = check_calib(cfg.calib)
    export_command(cfg)


if __name__ == "__main__":
    main()
