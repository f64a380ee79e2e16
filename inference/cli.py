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
gets one line on stderr instead). The exit code is 1 when any input
failed (its row is still written), 2 for bad flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moskd.config import build_parser, field, parse_namespace
from moskd.errors import cli_entry

PROG = "inference"


@dataclass
class InferenceConfig:
    run_dir: str = field("runs/digits", "run directory holding teacher/, students/ and selector/")
    bundle: Optional[str] = field(None, "predict from a deployment bundle (moskd export) instead of --run-dir",
                                  metavar="DIR")
    dataset: Optional[str] = field(None, "evaluate on this dataset (must be the run's; default: the run's)")
    split: Optional[str] = field(None, "evaluate the run on this split and write the report", choices=["test"])
    data_dir: Optional[str] = field(None, "where CIFAR files live (default: the run's)")
    download: bool = field(False, "download CIFAR through torchvision (needs network)")
    limit: Optional[int] = field(None, "evaluate on at most N images of the split")
    output: Optional[str] = field(None, "write one row per input to FILE.csv or FILE.jsonl, or to stdout "
                                        "with -", metavar="FILE")
    output_format: Optional[str] = field(None, "format of --output (default: its suffix; csv for -)",
                                         choices=["csv", "jsonl"])
    quiet: bool = field(False, "no table on stderr (failed inputs still get one line each)")
    batch_size: int = field(256, "images per forward pass")
    workers: int = field(0, "worker processes decoding image files (0: in this process)")
    resume: bool = field(False, "continue an interrupted --output FILE: keep its rows and predict only the "
                                "inputs after them (the same inputs must be given)")
    fast: str = field("fold+cl", "with --run-dir: CPU fast path, Conv+BN folding and channels_last "
                                 "(measured in benchmarks/bench_infer.py): eager | fold | fold+cl",
                      choices=["eager", "fold", "fold+cl"])
    invert: str = field("auto", "auto (digits: invert light-background images) | yes | no",
                        choices=["auto", "yes", "no"])
    device: str = field("auto", "auto | cpu | cuda | cuda:N")


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

    return run(cfg, inputs)


if __name__ == "__main__":
    main()
