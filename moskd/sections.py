"""The command layer's table of settings: every command's config class, by the YAML section that holds it.

One config file serves every command (moskd.config reads and checks it whole): `teacher`,
`students`, `sweep`, `selector`, `inference`, `report`, `policy`, `export`, `serve` and `pipeline`
sections,
and top-level keys any of them has. The library's parser (moskd.config) is handed this table; it names no command itself.
Torch-free, like every config class listed, so --help and config checks answer at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, TypeVar

from moskd import config
from moskd.config import field
from inference.config import ExportConfig, InferenceConfig, PolicyConfig, ReportConfig, ServeConfig
from selector.config import SelectorConfig
from students.config import StudentConfig, SweepConfig
from teacher.config import TeacherConfig

C = TypeVar("C")


@dataclass
class PipelineConfig:
    run_dir: str = field("runs/digits", "run directory shared by all stages")
    dataset: str = field("digits", "digits (bundled, offline) | fashion-mnist | cifar10 | cifar100 | folder:PATH")
    data_dir: str = field("data", "where fashion-mnist/CIFAR files live (or are downloaded to)")
    download: bool = field(False, "download fashion-mnist/CIFAR through torchvision (needs network)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    seed: int = field(0, "seed for every stage", range=">=0")
    limit: Optional[int] = field(None, "use at most N images per split (smoke runs and tests)", range=">=1")
    epochs: Optional[int] = field(None, "override every stage's epochs (smoke runs)", range=">=1")
    baselines: bool = field(True, "also train each student without the teacher (--no-teacher): the "
                                  "comparison every report needs")
    force: bool = field(False, "redo every stage even if finished")
    seeds: list[int] = field([], "run once per seed into RUN/seed<k>/ and write RUN/seeds.{json,md} "
                                 "(mean and std of every row); overrides --seed", range=">=0")
    complementary: Optional[str] = field(None, "train the distilled students as complementary specialists: none | "
                                               "clusters (StudentTrain --complementary; default: the recipe's "
                                               "setting, else none); baselines stay plain")
    shared_teacher: bool = field(True, "with --seeds: train the teacher once (first seed) and share it")
    teacher_from: Optional[str] = field(None, "a finished teacher folder (e.g. runs/a/seed0/teacher) to hard-link "
                                              "into this run instead of training one: compare methods on one "
                                              "teacher; or your own teacher's weights (.pt/.pth/.safetensors with "
                                              "--teacher-arch) or .onnx file, imported into RUN/teacher/")
    # your own teacher (--teacher-from FILE): StudentTrain's --teacher-* flags, passed on as they are
    teacher_arch: Optional[str] = field(None, "architecture of a --teacher-from weights file")
    teacher_config: Optional[str] = field(None, "JSON of its preprocessing (timm pretrained_cfg keys)")
    teacher_classes: Optional[str] = field(None, "file naming its classes in output order")
    teacher_min_accuracy: Optional[float] = field(None, "select accuracy it must reach before it teaches")
    keep_last: str = field("no", "drop each stage's last.pt (optimizer state, only --resume reads it) once the "
                                 "stage has finished, as `moskd clean RUN` does (a digits run shrinks ~4x); yes = "
                                 "keep them (the stage commands keep them by default)", choices=["yes", "no"])


SECTIONS: dict[str, type] = {
    "teacher": TeacherConfig, "students": StudentConfig, "sweep": SweepConfig, "selector": SelectorConfig,
    "inference": InferenceConfig, "report": ReportConfig, "policy": PolicyConfig, "export": ExportConfig,
    "serve": ServeConfig,
    "pipeline": PipelineConfig,
}


def parse_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str,
                 section: str | Sequence[str]) -> C:
    """defaults < --config YAML < flags, for a command whose config is `cls` (moskd.config.parse_config)."""
    return config.parse_config(cls, argv, prog, description, section, SECTIONS)


def build_parser(cls: type, prog: str, description: str) -> config.Parser:
    return config.build_parser(cls, prog, description, SECTIONS)


def parse_namespace(cls: type, argv: Sequence[str] | None, section: str | Sequence[str], parser: config.Parser):
    return config.parse_namespace(cls, argv, section, parser, SECTIONS)


def resolve_config(cls: type[C], path: Optional[str], section: str | Sequence[str], **overrides: Any) -> C:
    """A stage's config from a recipe file and explicit values, as its command would parse it."""
    return config.resolve_config(cls, path, section, SECTIONS, **overrides)


def load_yaml_overrides(cls: type, path: str, section: str | Sequence[str], **kw: Any) -> dict[str, Any]:
    """The checked values a config file gives `cls` (moskd.config.load_yaml_overrides)."""
    return config.load_yaml_overrides(cls, path, section, SECTIONS, **kw)
