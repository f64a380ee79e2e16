"""teacherTrain's settings (torch-free, so --help and config checks never load torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moskd.config import field
from moskd.settings import TrainConfig


@dataclass
class TeacherConfig(TrainConfig):
    arch: str = field("resnet50", "teacher architecture: a registry, torchvision or timm name")
    pretrained: Optional[str] = field(None, "local weights to start from (a moskd checkpoint, a state_dict .pt/.pth "
                                            "or .safetensors); every tensor must fit")
    pretrained_partial: bool = field(False, "with --pretrained: accept weights that fit only in part (e.g. another "
                                            "head or stem); the rest keeps its random init")
    stem: str = field("cifar", "input stem: cifar (3x3 stride 1, for 8x8/32x32) | imagenet (torchvision's "
                               "strided stem, /4; for 28x28 and larger)", choices=("cifar", "imagenet"))
    target_accuracy: Optional[float] = field(None, "`select` accuracy this recipe expects of the teacher (0..1]; "
                                                   "StudentTrain warns when the teacher it distils from is more "
                                                   "than 5 points below it", range="(0,1]")
