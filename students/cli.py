"""StudentTrain: distil the teacher into a student on `train`, choose its checkpoint on `select`.

    StudentTrain --run-dir RUN --model 1            # DenseNet121 from RUN/teacher/best.pt
    StudentTrain --run-dir RUN --model 2            # GoogLeNet, same shared teacher-logit cache
    StudentTrain --run-dir RUN --model 1 --no-teacher   # the plain baseline, for comparison

Writes RUN/students/<arch>/ (or RUN/students/<arch>-baseline/ with --no-teacher):
best.pt, last.pt, metrics.jsonl, config.yaml, summary.json, curves.png.
Loss: alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher/T || student/T), or MSE logit
matching with --kd-loss mse. With --teacher-cache K (default) the teacher's logits for K augmented
views of every train image are computed once into RUN/teacher/cache/ and shared by all students.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from moskd.config import field, parse_config
from moskd.per_model import PerModel
from moskd.errors import cli_entry
from moskd.settings import TrainConfig
from moskd.values import SEED_STUDENTS

PROG = "StudentTrain"


def kd_losses():
    """The distillation losses students.losses knows (read when a value is checked, not at import)."""
    from students.losses import KD_LOSSES

    return list(KD_LOSSES)


# The settings a recipe may give one student architecture in `students: models: {<arch>: {...}}`:
# its schedule, so GoogLeNet and DenseNet121 can train for different epochs, batch sizes and rates.
# The baseline (--no-teacher) of an architecture uses the same entry; flags still win. The resolved
# values are recorded on the student's card (`training`) and in its config.yaml.
PER_MODEL_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "min_lr", "optimizer",
                  "scheduler", "label_smoothing", "ema_decay")


@dataclass
class StudentConfig(TrainConfig):
    PER_MODEL: ClassVar[PerModel] = PerModel("model", PER_MODEL_KEYS, SEED_STUDENTS,
                                             tuple(SEED_STUDENTS.values()))
    # a student learns from the teacher's soft targets as well as the labels: on digits it reaches
    # the teacher's accuracy in about half the teacher's epochs (8 epochs: ~2 minutes on 2 CPU cores)
    epochs: int = field(8, "training epochs")
    model: str = field("1", "student: 1 = densenet121, 2 = googlenet, or any registry/torchvision/timm name")
    teacher: Optional[str] = field(None, "teacher checkpoint; None = RUN/teacher/best.pt")
    alpha: float = field(0.5, "weight of the hard-label cross-entropy; 1 - alpha weighs the teacher term (0..1)")
    temperature: float = field(4.0, "softmax temperature T of the KL term (> 0; the term is scaled by T^2)")
    kd_loss: str = field("kl", "kl (Hinton soft targets) | mse (logit matching, no temperature)",
                         choices=kd_losses)
    no_teacher: bool = field(False, "train the plain baseline student (alpha = 1, no teacher) "
                                    "into RUN/students/<arch>-baseline/")
    teacher_cache: int = field(10, "K augmented views per train image whose teacher logits are cached in "
                                   "RUN/teacher/cache/ (0 = run the teacher online every step)")
    teacher_topk: int = field(0, "cache only the teacher's T largest probabilities and their classes per view "
                                 "(0 = all logits; for many classes: 4T bytes per view instead of 2C)")
    cache_seed: int = field(0, "seed of the cached views (shared by every student reading the cache)")
    cache_only: bool = field(False, "build (or validate) the teacher-logit cache, then stop without training")
    complementary: str = field("none", "none (independent students) | clusters (specialists on the teacher's "
                                       "confusable class clusters; students.complementary)",
                               choices=("none", "clusters"))
    owners: list[str] = field(["1", "2"], "with --complementary: the students the class clusters go to, hardest "
                                          "cluster first (1 = densenet121, 2 = googlenet, or names)")
    other_weight: float = field(0.25, "with --complementary clusters: loss weight of images outside the "
                                      "student's own classes (0 < w <= 1; own classes weigh 1)")
    stem: str = field("cifar", "input stem: cifar (3x3 stride 1, for 8x8/32x32) | imagenet (torchvision's "
                               "strided stem: /4, GoogLeNet /8; for 28x28 and larger)",
                      choices=("cifar", "imagenet"))


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then train."""
    cfg = parse_config(StudentConfig, argv, PROG, __doc__, section="students")
    from moskd.runtime import run_stage
    from students.train import run

    return run_stage(cfg, run)


if __name__ == "__main__":
    main()
