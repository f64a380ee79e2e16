"""teacherTrain: train the teacher on `train`, choose its checkpoint on `select`.

Writes RUN/teacher/{best.pt,last.pt,metrics.jsonl,config.yaml,summary.json}.
Multi-GPU: torchrun --nproc-per-node 2 -m teacher.train --run-dir RUN ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from moskd.config import field
from moskd.data import data_from_config, make_loader
from moskd.engine import Stage, TrainConfig, cross_entropy, finish, fit
from moskd.errors import cli_entry
from moskd.models import create_model, stem_kwargs
from moskd.run import RunDir
from moskd.runtime import Runtime, stage_main


@dataclass
class TeacherConfig(TrainConfig):
    arch: str = field("resnet50", "teacher architecture: a registry, torchvision or timm name")
    pretrained: Optional[str] = field(None, "local weights to start from (a moskd checkpoint or a state_dict)")
    stem: str = field("cifar", "input stem: cifar (3x3 stride 1, for 8x8/32x32) | imagenet (torchvision's "
                               "strided stem, /4; for 28x28 and larger)")


def run(cfg: TeacherConfig, rt: Runtime) -> dict:
    data = data_from_config(cfg)
    torch.manual_seed(cfg.seed)
    kwargs = stem_kwargs(cfg.arch, cfg.stem)
    model = create_model(cfg.arch, data.num_classes, data.in_chans, pretrained=cfg.pretrained, **kwargs)
    loader = lambda split, **kw: make_loader(data, split, device=rt.device, seed=cfg.seed, rank=rt.rank,  # noqa: E731
                                             world=rt.world, **kw)
    stage = Stage(
        role="teacher", out_dir=RunDir(cfg.run_dir).teacher.path, model=model,
        train_loader=loader("train", batch_size=cfg.batch_size, train=True),
        select_loader=loader("select", batch_size=cfg.eval_batch_size),
        objective=cross_entropy(cfg.label_smoothing),
        card={"role": "teacher", "arch": cfg.arch, **data.card(), "model_kwargs": kwargs},
    )
    summary = fit(stage, cfg, rt, "teacherTrain")
    return finish(stage, cfg, rt, summary, make_loader(data, "test", cfg.eval_batch_size, device=rt.device))


@cli_entry("teacherTrain")
def main(argv=None):
    stage_main(argv, TeacherConfig, run, "teacherTrain", __doc__, section="teacher")


if __name__ == "__main__":
    main()
