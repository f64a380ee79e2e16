"""trainSelector: label `select` with the students' correctness, then train the selector on it.

Reads RUN/students/<name>/best.pt (default: every distilled student), writes
RUN/selector/{labels.pt,best.pt,last.pt,metrics.jsonl,config.yaml,summary.json}.

The selector learns, per image and student, how right the student will be: binary cross-entropy
against the student's softmax probability of the true class (--target prob, the default for
independent students), its 0/1 correctness (--target correct), or, for complementary students
(StudentTrain --complementary), which student owns the image's class (--target owner, their default).
With --labels-from select+spare it also trains on the `spare` images (the training pool beyond
--train-limit, never seen by the students, so their correctness there is as honest as on `select`).
`select` is split again, deterministically by --split-seed, into a part the selector trains on
and a held-out part that
(1) chooses its checkpoint by routed accuracy (the accuracy of the student each image is routed
to), (2) calibrates its scores per student (Platt scaling: sigmoid(score) = P(student right)), and
(3) chooses the router's operating point: the cost knob (see moskd.policy.entry_routes)
with the best routed accuracy, ties to fewer MACs. `test` is never read.
"""
from __future__ import annotations

from moskd.errors import cli_entry
from moskd.sections import parse_config
from selector.config import SelectorConfig

PROG = "trainSelector"


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then label and train."""
    cfg = parse_config(SelectorConfig, argv, PROG, __doc__, section="selector")
    from moskd.runtime import run_stage
    from selector.train import run

    return run_stage(cfg, run)


if __name__ == "__main__":
    main()
