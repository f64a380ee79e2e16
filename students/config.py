"""StudentTrain's and moskd sweep's settings (torch-free, so --help and config checks never load torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from moskd.config import field
from moskd.per_model import PerModel
from moskd.settings import TrainConfig
from moskd.values import SEED_STUDENTS


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
    epochs: int = field(8, "training epochs", range=">=1")
    model: str = field("1", "student: 1 = densenet121, 2 = googlenet, or any registry/torchvision/timm name")
    teacher: Optional[str] = field(None, "teacher: a moskd run or checkpoint, a weights file (.pt/.pth state dict, "
                                         ".safetensors) with --teacher-arch, or an .onnx file (imported into "
                                         "RUN/teacher/); None = RUN/teacher/best.pt")
    teacher_arch: Optional[str] = field(None, "architecture of a --teacher weights file: a registry, torchvision or "
                                              "timm name")
    teacher_config: Optional[str] = field(None, "JSON of the imported teacher's preprocessing, timm pretrained_cfg "
                                                "keys input_size, mean, std, interpolation, num_classes (+ "
                                                "model_kwargs); default ImageNet's")
    teacher_classes: Optional[str] = field(None, "file naming the imported teacher's classes in its output order, "
                                                 "one a line: maps them to the dataset's")
    teacher_min_accuracy: Optional[float] = field(None, "select accuracy an imported teacher must reach before it "
                                                        "teaches (default: a quarter of the way from chance to 1)")
    teacher_import_only: bool = field(False, "import --teacher into RUN/teacher/, score it on select, then stop")
    alpha: float = field(0.5, "weight of the hard-label cross-entropy; 1 - alpha weighs the teacher term (0..1)", range="[0,1]")
    temperature: float = field(4.0, "softmax temperature T of the KL term (> 0; the term is scaled by T^2)", range=">0")
    kd_loss: str = field("kl", "kl (Hinton soft targets) | mse (logit matching, no temperature)",
                         choices=kd_losses)
    no_teacher: bool = field(False, "train the plain baseline student (alpha = 1, no teacher) "
                                    "into RUN/students/<arch>-baseline/")
    teacher_cache: int = field(10, "K augmented views per train image whose teacher logits are cached in "
                                   "RUN/teacher/cache/ (0 = run the teacher online every step)", range=">=0")
    teacher_topk: int = field(0, "cache only the teacher's T largest probabilities and their classes per view "
                                 "(0 = all logits; for many classes: 4T bytes per view instead of 2C)", range=">=0")
    cache_seed: int = field(0, "seed of the cached views (shared by every student reading the cache)", range=">=0")
    cache_only: bool = field(False, "build (or validate) the teacher-logit cache, then stop without training")
    complementary: str = field("none", "none (independent students) | clusters (specialists on the teacher's "
                                       "confusable class clusters; students.complementary)",
                               choices=("none", "clusters"))
    owners: list[str] = field(["1", "2"], "with --complementary: the students the class clusters go to, hardest "
                                          "cluster first (1 = densenet121, 2 = googlenet, or names)")
    other_weight: float = field(0.25, "with --complementary clusters: loss weight of images outside the "
                                      "student's own classes (0 < w <= 1; own classes weigh 1)", range="(0,1]")
    stem: str = field("cifar", "input stem: cifar (3x3 stride 1, for 8x8/32x32) | imagenet (torchvision's "
                               "strided stem: /4, GoogLeNet /8; for 28x28 and larger)",
                      choices=("cifar", "imagenet"))


@dataclass
class SweepConfig(StudentConfig):
    temperatures: list[float] = field([1.0, 4.0, 10.0], "softmax temperatures T to try (> 0)", range=">0")
    alphas: list[float] = field([0.0, 0.5], "hard-label weights alpha to try (0..1; 1 = the baseline)", range="[0,1]")
    seeds: list[int] = field([0, 1], "seeds per grid point: mean ± std over these", range=">=0")
    baseline: bool = field(True, "also train the baseline student (alpha = 1, no teacher) for each seed")
