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

from dataclasses import dataclass

from moskd.config import field, parse_config
from moskd.errors import cli_entry
from moskd.settings import TrainConfig

PROG = "trainSelector"
TARGETS = ("auto", "prob", "correct", "owner")
LABEL_SOURCES = ("select", "select+spare")


@dataclass
class SelectorConfig(TrainConfig):
    # the selector is tiny and `select` is small: short steps, Adam, a few dozen epochs
    epochs: int = field(30, "training epochs")
    batch_size: int = field(32, "images per step (per process under torchrun)")
    lr: float = field(3e-3, "peak learning rate (after warm-up)")
    optimizer: str = field("adamw", "sgd (Nesterov momentum) | momentum | adam | adamw, or any timm optimizer")
    weight_decay: float = field(1e-4, "L2 weight decay (not on biases and norms)")
    students: list[str] = field([], "folders under RUN/students to route between (default: every distilled "
                                    "student); they are ordered cheapest (fewest MACs) first")
    width: int = field(32, "channels of the first conv block (the next two have 2x and 4x)")
    dropout: float = field(0.0, "dropout before the selector's head (0..1)")
    holdout_fraction: float = field(0.3, "share of `select` held out to choose the selector checkpoint (0..1)")
    tie_margin: float = field(0.05, "scores within this of the best count as a tie, won by the cheaper student")
    augment: bool = field(False, "shift/flip images while training (labels were computed on unshifted ones)")
    target: str = field("auto", "what the selector learns per student: prob (its softmax probability of the "
                                "true class) | correct (0/1 correctness) | owner (1 for the student that owns the "
                                "image's class under StudentTrain --complementary, else 0) | auto (owner for "
                                "complementary students, else prob)", choices=TARGETS)
    calibrate: bool = field(True, "Platt-scale each student's score on the held-out part of `select`")
    labels_from: str = field("select", "what the selector trains on: select (its training part of `select`) | "
                                       "select+spare (also the `spare` images: the training pool beyond "
                                       "--train-limit, which the students never saw); the held-out part of "
                                       "`select` still chooses the checkpoint, calibration and knob",
                             choices=LABEL_SOURCES)


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then label and train."""
    cfg = parse_config(SelectorConfig, argv, PROG, __doc__, section="selector")
    from moskd.runtime import run_stage
    from selector.train import run

    return run_stage(cfg, run)


if __name__ == "__main__":
    main()
