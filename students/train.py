"""The StudentTrain stage's work: distil the teacher into a student (the command line and its
settings, StudentConfig, live in students.cli, which loads no torch)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from moskd.checkpoint import build_model_from_checkpoint, load_checkpoint, read_checkpoint_file
from moskd.data import DataBundle, data_from_config, make_loader
from moskd.engine import Stage, cross_entropy, finish, fit, prepare_out_dir
from moskd.errors import MoskdError
from moskd.models import SEED_STUDENTS, adapt_input, available_models, create_model, stem_kwargs, unwrap
from moskd.precision import policy
from moskd.profile import model_cost
from moskd.runtime import Runtime, log
from students.cache import cache_file, cache_key, load_or_build
from students.cli import StudentConfig, main  # noqa: F401  (re-exported: callers and tests import them from here)
from students.losses import KD_LOSSES, cached_objective, online_objective
from students.teacher_check import warn_if_poor_teacher

STUDENTS = SEED_STUDENTS


def resolve_arch(model: str) -> str:
    """--model 1|2|name -> architecture name; any other number is a mistake, not a name."""
    if model in STUDENTS:
        return STUDENTS[model]
    if model.strip().lstrip("-").isdigit():
        raise MoskdError(f"--model {model}: no such student; choose {choices()}")
    return model


def choices() -> str:
    numbered = ", ".join(f"{k} ({v})" for k, v in STUDENTS.items())
    return f"{numbered}, or an architecture name ({', '.join(available_models())}, any torchvision or timm name)"


def create_student(arch: str, data: DataBundle, **kwargs) -> nn.Module:
    try:
        return create_model(arch, data.num_classes, data.in_chans, **kwargs)
    except MoskdError as e:
        raise MoskdError(f"--model {arch}: {e}; --model takes {choices()}") from None


def check_config(cfg: StudentConfig) -> None:
    if not 0.0 <= cfg.alpha <= 1.0:
        raise MoskdError(f"--alpha {cfg.alpha}: must lie in 0..1 (1 = labels only, 0 = teacher only)")
    if cfg.temperature <= 0:
        raise MoskdError(f"--temperature {cfg.temperature}: must be > 0")
    if cfg.kd_loss not in KD_LOSSES:
        raise MoskdError(f"--kd-loss {cfg.kd_loss}: choose one of {', '.join(KD_LOSSES)}")
    if cfg.teacher_cache < 0:
        raise MoskdError(f"--teacher-cache {cfg.teacher_cache}: must be >= 0 (0 = online teacher)")


def teacher_path(cfg: StudentConfig) -> Path:
    return Path(cfg.teacher) if cfg.teacher else Path(cfg.run_dir) / "teacher" / "best.pt"


def load_teacher(path: Path, data: DataBundle, run_dir: str) -> nn.Module:
    """The teacher of `path` in eval mode, its card checked against the data; one line on any mismatch."""
    if not path.is_file():
        raise MoskdError(f"no teacher checkpoint at {path}; run `teacherTrain --run-dir {run_dir}` first "
                         f"(or pass --teacher PATH, or --no-teacher for the baseline student)")
    hint = "distil from a teacher trained on this dataset (--teacher PATH), or pass --no-teacher"
    ckpt = load_checkpoint(path, role="teacher", dataset=data.name, num_classes=data.num_classes, hint=hint)
    card = ckpt["card"]
    if list(card["input_size"]) != data.input_size:
        raise MoskdError(f"{path}: teacher takes {card['input_size']} inputs, this data is {data.input_size}; {hint}")
    # a teacher trained on another slice (--limit) normalised with other statistics: adapt its input
    teacher = adapt_input(build_model_from_checkpoint(ckpt), card, data.card(), path)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


SPLIT_SETTINGS = ("split_seed", "select_fraction", "test_fraction")


def check_same_split(path: Path, cfg: StudentConfig) -> None:
    """A teacher split another way may have trained on this student's `select` or `test` images."""
    teacher_cfg = read_checkpoint_file(path).get("config") or {}
    for key in SPLIT_SETTINGS:
        if key in teacher_cfg and teacher_cfg[key] != getattr(cfg, key):
            flag = "--" + key.replace("_", "-")
            raise MoskdError(f"{path}: teacher was trained with {flag} {teacher_cfg[key]}, this student uses "
                             f"{getattr(cfg, key)}; pass {flag} {teacher_cfg[key]} so both see the same split")


def out_dir_for(cfg: StudentConfig, arch: str) -> Path:
    return Path(cfg.run_dir) / "students" / (f"{arch}-baseline" if cfg.no_teacher else arch)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def describe_cost(cost: dict) -> str:
    return f"{cost['params'] / 1e6:.2f}M params, {_mib(cost['bytes'])}, {cost['macs'] / 1e6:.1f}M MACs/image"


def run(cfg: StudentConfig, rt: Runtime, out_dir: Path | None = None, data: DataBundle | None = None) -> dict:
    """Train one student; returns the summary (also written to summary.json)."""
    check_config(cfg)
    arch = resolve_arch(cfg.model)
    if cfg.no_teacher:
        cfg = dataclasses.replace(cfg, alpha=1.0)  # recorded as such in config.yaml
    out = out_dir or out_dir_for(cfg, arch)
    data = data or data_from_config(cfg)
    torch.manual_seed(cfg.seed)
    model_kwargs = stem_kwargs(arch, cfg.stem)
    model = create_student(arch, data, **model_kwargs)
    # alpha = 1 gives the teacher term no weight: train on labels alone and never load a teacher.
    uses_teacher = not cfg.no_teacher and cfg.alpha < 1.0
    tpath = teacher_path(cfg) if uses_teacher else None
    distillation = {
        "kd_loss": cfg.kd_loss if uses_teacher else None, "alpha": cfg.alpha,
        "temperature": cfg.temperature if uses_teacher and cfg.kd_loss == "kl" else None,
        "teacher": str(tpath) if uses_teacher else None,
        "teacher_cache": cfg.teacher_cache if uses_teacher else 0,
    }
    card = {"role": "student", "arch": arch, **data.card(), "distillation": distillation,
            "model_kwargs": model_kwargs}
    if cfg.cache_only and not (uses_teacher and cfg.teacher_cache > 0):
        raise MoskdError("--cache-only needs a teacher and --teacher-cache K > 0")
    if not cfg.resume and not cfg.cache_only:
        prepare_out_dir(out, cfg, "StudentTrain", card)  # refuse to clobber before paying for a teacher

    views, teacher_cost = None, None
    if uses_teacher:
        teacher = policy(rt.device, cfg.amp, training=True).model(load_teacher(tpath, data, cfg.run_dir))
        check_same_split(tpath, cfg)
        warn_if_poor_teacher(tpath, data.num_classes)
        teacher_cost = model_cost(unwrap(teacher), data.input_size)
        if cfg.teacher_cache > 0:
            key = cache_key(tpath, data, cfg.teacher_cache, cfg.cache_seed)
            views = load_or_build(cache_file(cfg.run_dir, cfg.teacher_cache), key, teacher, data,
                                  batch_size=cfg.eval_batch_size, rt=rt, amp=cfg.amp)
            del teacher  # the cache stands in for it from here on
            if cfg.cache_only:
                return {"cache": str(cache_file(cfg.run_dir, cfg.teacher_cache)), "views": int(views[0].shape[1])}
            objective = cached_objective(cfg.alpha, cfg.temperature, cfg.kd_loss, cfg.label_smoothing)
        else:
            objective = online_objective(teacher, cfg.alpha, cfg.temperature, cfg.kd_loss,
                                         cfg.label_smoothing, cfg.amp)
    else:
        if not cfg.no_teacher:
            log(rt, "alpha = 1: the teacher term has no weight; training on labels only, no teacher loaded")
        objective = cross_entropy(cfg.label_smoothing)

    cost = model_cost(model, data.input_size)
    log(rt, f"student {arch}: {describe_cost(cost)}"
        + (f"  (teacher: {describe_cost(teacher_cost)})" if teacher_cost else ""))
    loader = lambda split, **kw: make_loader(data, split, device=rt.device, seed=cfg.seed, rank=rt.rank,  # noqa: E731
                                             world=rt.world, **kw)
    stage = Stage(
        role="student", out_dir=out, model=model,
        train_loader=loader("train", batch_size=cfg.batch_size, train=True, views=views),
        select_loader=loader("select", batch_size=cfg.eval_batch_size),
        objective=objective, card=card,
    )
    summary = fit(stage, cfg, rt, "StudentTrain")
    summary.update(arch=arch, cost=cost, teacher_cost=teacher_cost, distillation=distillation)
    return finish(stage, cfg, rt, summary, make_loader(data, "test", cfg.eval_batch_size, device=rt.device))


if __name__ == "__main__":
    main()
