"""trainSelector's settings (torch-free, so --help and config checks never load torch)."""
from __future__ import annotations

from dataclasses import dataclass

from moskd.config import field
from moskd.settings import TrainConfig

TARGETS = ("auto", "prob", "correct", "owner")
LABEL_SOURCES = ("select", "select+spare")


@dataclass
class SelectorConfig(TrainConfig):
    # the selector is tiny and `select` is small: short steps, Adam, a few dozen epochs
    epochs: int = field(30, "training epochs", range=">=1")
    batch_size: int = field(32, "images per step (per process under torchrun)", range=">=1")
    lr: float = field(3e-3, "peak learning rate (after warm-up)", range=">0")
    optimizer: str = field("adamw", "sgd (Nesterov momentum) | momentum | adam | adamw, or any timm optimizer")
    weight_decay: float = field(1e-4, "L2 weight decay (not on biases and norms)", range=">=0")
    students: list[str] = field([], "folders under RUN/students to route between (default: every distilled "
                                    "student); they are ordered cheapest (fewest MACs) first")
    width: int = field(32, "channels of the first conv block (the next two have 2x and 4x)", range=">=1")
    dropout: float = field(0.0, "dropout before the selector's head (0..1)", range="[0,1)")
    holdout_fraction: float = field(0.3, "share of `select` held out to choose the selector checkpoint (0..1)", range="(0,1)")
    tie_margin: float = field(0.05, "scores within this of the best count as a tie, won by the cheaper student", range=">=0")
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
