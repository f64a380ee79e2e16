"""The teacher stage's work: train the teacher on `train`, choose its checkpoint on `select`.

Its settings (TeacherConfig) live in teacher.config and its command line (teacherTrain) in
teacher.cli, both torch-free; this module is imported once the flags have been parsed.
"""
from __future__ import annotations


import torch

from moskd.data import data_from_config
from moskd.loader import make_loader
from moskd.engine import Stage, cross_entropy, finish, fit
from moskd.models import create_model, stem_kwargs
from moskd.run import RunDir
from moskd.runtime import Runtime
from teacher.config import TeacherConfig


def run(cfg: TeacherConfig, rt: Runtime) -> dict:
    data = data_from_config(cfg)
    torch.manual_seed(cfg.seed)
    kwargs = stem_kwargs(cfg.arch, cfg.stem)
    model = create_model(cfg.arch, data.num_classes, data.in_chans, pretrained=cfg.pretrained,
                         pretrained_partial=cfg.pretrained_partial, **kwargs)
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


if __name__ == "__main__":  # the command moved to teacher.cli (the command layer); say so instead of doing nothing
    import sys

    print("teacher.train is the stage's library; run `python -m teacher.cli ...` or `teacherTrain ...`", file=sys.stderr)
    raise SystemExit(2)
