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
--output FILE.csv or FILE.jsonl writes the rows to a file (atomically), --output - to stdout (CSV
unless --output-format jsonl). The human-readable table goes to stderr, or nowhere with --quiet
(then each failed input gets one line on stderr instead). The exit code is 2 when any input
failed (its row is still written) and for bad flags.
"""
from __future__ import annotations

from moskd.errors import cli_entry
from moskd.sections import build_parser, parse_namespace
from inference.config import InferenceConfig

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


if __name__ == "__main__":
    main()
