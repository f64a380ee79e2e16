"""The StudentTrain stage's work: distil the teacher into a student (its settings, StudentConfig,
live in students.config and its command line in students.cli, both torch-free)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from moskd.teacher_import import resolve_teacher
from moskd.teacher_source import TeacherRequest
from moskd.atomic import file_sha256
from moskd.data import DataBundle, data_from_config
from moskd.loader import make_loader
from moskd.engine import Stage, finish, fit, prepare_out_dir
from moskd.errors import MoskdError
from moskd.models import available_models, create_model, stem_kwargs
from moskd.teacher_import import teacher_provenance
from moskd.teacher_input import TeacherInput
from moskd.values import SEED_STUDENTS
from moskd.precision import choose_precision
from moskd.profile import model_cost
from moskd.run import RunDir
from moskd.loaded import load_teacher
from moskd.loaded import SPLIT_KEYS
from moskd.atomic import write_json
from moskd.runtime import Runtime, log
from students.config import StudentConfig
from students.teacher_outputs import teacher_outputs
from students.complementary import build_partition, image_weights, load_partition
from students.losses import KD_LOSSES, label_objective
from students.teacher_check import check_imported_teacher, warn_if_poor_teacher

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
    if cfg.teacher_topk < 0 or (cfg.teacher_topk and cfg.kd_loss != "kl"):
        raise MoskdError(f"--teacher-topk {cfg.teacher_topk}: must be >= 0, and works with --kd-loss kl only "
                         f"(it keeps probabilities, not logits)")
    if cfg.complementary != "none" and (cfg.no_teacher or cfg.alpha >= 1.0):
        raise MoskdError(f"--complementary {cfg.complementary} partitions the data with the teacher; "
                         f"drop --no-teacher (and keep --alpha below 1), or pass --complementary none")


def training_settings(cfg: StudentConfig) -> dict:
    """The schedule this student was trained with (after the recipe's per-model entry and the flags),
    for its card: the settings a `students: models:` entry may set."""
    return {k: getattr(cfg, k) for k in cfg.PER_MODEL.keys}


def teacher_path(cfg: StudentConfig) -> Path:
    return Path(cfg.teacher) if cfg.teacher else RunDir(cfg.run_dir).teacher.best


TEACHER_HINT = "distil from a teacher trained on this dataset (--teacher PATH), or pass --no-teacher"


def find_teacher(cfg: StudentConfig, data: DataBundle, rt: Runtime) -> Path:
    """The teacher checkpoint to distil from; one line naming the command that makes it when absent.
    A weights or ONNX file given to --teacher is imported into RUN/teacher/ first (moskd.teacher_import),
    after its check on `select`."""

    if not cfg.teacher:  # the run's own teacher: say where the run stopped
        RunDir(cfg.run_dir).require("teacher", also="(or pass --teacher PATH, or --no-teacher for the baseline "
                                                  "student)")
        return teacher_path(cfg)
    if not Path(cfg.teacher).exists():
        raise MoskdError(f"no teacher checkpoint at {cfg.teacher}; pass an existing file to --teacher (or --no-teacher)")
    request = TeacherRequest(cfg.teacher, cfg.teacher_arch, cfg.teacher_config, cfg.teacher_classes)

    def check(model: nn.Module, card: dict) -> dict:  # scored on select before it is written into the run
        return check_imported_teacher(model, card, data, min_accuracy=cfg.teacher_min_accuracy,
                                      batch_size=cfg.eval_batch_size, device=rt.device, log=lambda line: log(rt, line))

    def resolve() -> Path:
        return resolve_teacher(request, RunDir(cfg.run_dir).teacher, data, check, log=lambda line: log(rt, line))

    path = resolve() if rt.is_main else None  # rank 0 imports; the others then find the import and reuse it
    rt.barrier()
    return path if path is not None else resolve()


def out_dir_for(cfg: StudentConfig, arch: str) -> Path:
    run = RunDir(cfg.run_dir)
    return run.student(run.student_name(arch, baseline=cfg.no_teacher)).path


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def describe_cost(cost: dict) -> str:
    return f"{cost['params'] / 1e6:.2f}M params, {_mib(cost['bytes'])}, {cost['macs'] / 1e6:.1f}M MACs/image"


def teacher_for(cfg: StudentConfig, data: DataBundle, rt: Runtime, distillation: dict) -> tuple[Path, nn.Module, dict]:
    """(checkpoint, frozen teacher fed through the input conversion, its cost); records where it came
    from (source, sha256, preprocessing) on the card's `distillation`."""
    tpath = find_teacher(cfg, data, rt)
    teacher, tcard = load_teacher(tpath, dataset=data.name, num_classes=data.num_classes, like=data.card(),
                                  split={k: getattr(cfg, k) for k in SPLIT_KEYS}, hint=TEACHER_HINT, frozen=True)
    distillation.update(teacher=str(tpath), **teacher_provenance(tcard, tpath))
    teacher = choose_precision(rt.device, cfg.amp, training=True).model(teacher)
    warn_if_poor_teacher(tpath, data.num_classes)
    # the bare teacher at its own input size (not through the input conversion)
    cost = model_cost(teacher.inner if isinstance(teacher, TeacherInput) else teacher, tcard["input_size"])
    return tpath, teacher, cost


def distillation_record(cfg: StudentConfig, uses_teacher: bool, tpath: Path | None) -> dict:
    """The card's `distillation`: how this student learns from its teacher (None/0 without one)."""
    return {
        "kd_loss": cfg.kd_loss if uses_teacher else None, "alpha": cfg.alpha,
        "temperature": cfg.temperature if uses_teacher and cfg.kd_loss == "kl" else None,
        "teacher": str(tpath) if uses_teacher else None,
        "teacher_cache": cfg.teacher_cache if uses_teacher else 0,
        "teacher_topk": cfg.teacher_topk if uses_teacher and cfg.teacher_cache > 0 else 0,
        "complementary": {"method": cfg.complementary}
        if cfg.complementary == "none" else None,  # filled in once the partition is known
    }


def run(cfg: StudentConfig, rt: Runtime, out_dir: Path | None = None, data: DataBundle | None = None) -> dict:
    """Train one student; returns the summary (also written to summary.json)."""
    check_config(cfg)
    arch = resolve_arch(cfg.model)
    if cfg.no_teacher:
        cfg = dataclasses.replace(cfg, alpha=1.0)  # recorded as such in config.yaml
    out = out_dir or out_dir_for(cfg, arch)
    data = data or data_from_config(cfg)
    if cfg.teacher_import_only:  # moskd pipeline --teacher-from FILE: the import is the teacher stage
        if not cfg.teacher:
            raise MoskdError("--teacher-import-only needs --teacher FILE")
        return {"teacher": str(find_teacher(cfg, data, rt))}
    torch.manual_seed(cfg.seed)
    model_kwargs = stem_kwargs(arch, cfg.stem)
    model = create_student(arch, data, **model_kwargs)
    # alpha = 1 gives the teacher term no weight: train on labels alone and never load a teacher.
    uses_teacher = not cfg.no_teacher and cfg.alpha < 1.0
    tpath = teacher_path(cfg) if uses_teacher else None
    distillation = distillation_record(cfg, uses_teacher, tpath)
    card = {"role": "student", "arch": arch, **data.card(), "distillation": distillation,
            "model_kwargs": model_kwargs, "training": training_settings(cfg)}
    if cfg.cache_only and not (uses_teacher and cfg.teacher_cache > 0):
        raise MoskdError("--cache-only needs a teacher and --teacher-cache K > 0")
    if not cfg.resume and not cfg.cache_only:
        prepare_out_dir(out, cfg, "StudentTrain", card)  # refuse to clobber before paying for a teacher

    views, teacher_cost, weights = None, None, None
    if uses_teacher:
        tpath, teacher, teacher_cost = teacher_for(cfg, data, rt, distillation)
        if cfg.complementary != "none" and not cfg.cache_only:
            weights = complementary_weights(cfg, arch, tpath, teacher, data, rt, distillation)
        outputs = teacher_outputs(cfg, teacher, tpath, data, rt, RunDir(cfg.run_dir).teacher_cache(cfg.teacher_cache),
                                  weighted=weights is not None,
                                  preprocessing=distillation["teacher_preprocessing"])  # cached or online: decided there
        objective, views = outputs.objective, outputs.views
        if outputs.mode == "cached":
            del teacher  # the cache stands in for it from here on
            if cfg.cache_only:
                return {"cache": str(outputs.cache), "views": int(views[0].shape[1])}
    else:
        if not cfg.no_teacher:
            log(rt, "alpha = 1: the teacher term has no weight; training on labels only, no teacher loaded")
        objective = label_objective(cfg.label_smoothing)

    cost = model_cost(model, data.input_size)
    log(rt, f"student {arch}: {describe_cost(cost)}"
        + (f"  (teacher: {describe_cost(teacher_cost)})" if teacher_cost else ""))
    loader = lambda split, **kw: make_loader(data, split, device=rt.device, seed=cfg.seed, rank=rt.rank,  # noqa: E731
                                             world=rt.world, **kw)
    stage = Stage(
        role="student", out_dir=out, model=model,
        train_loader=loader("train", batch_size=cfg.batch_size, train=True, views=views,
                            extras=() if weights is None else (weights,)),
        select_loader=loader("select", batch_size=cfg.eval_batch_size),
        objective=objective, card=card,
    )
    summary = fit(stage, cfg, rt, "StudentTrain")
    summary.update(arch=arch, cost=cost, teacher_cost=teacher_cost, distillation=distillation)
    return finish(stage, cfg, rt, summary, make_loader(data, "test", cfg.eval_batch_size, device=rt.device))


def complementary_weights(cfg: StudentConfig, arch: str, tpath: Path, teacher: nn.Module, data: DataBundle,
                          rt: Runtime, distillation: dict) -> torch.Tensor:
    """Per-image loss weights of a specialist (--complementary): 1 on its own classes, --other-weight
    elsewhere; records the partition on the card's `distillation`."""
    partition = ensure_partition(cfg, tpath, teacher, data, rt)
    if arch not in partition["owners"]:
        raise MoskdError(f"--complementary {cfg.complementary}: {arch} owns no part of the partition "
                         f"(owners: {', '.join(partition['owners'])}); train those students or pass "
                         f"--complementary none")
    distillation["complementary"] = {
        "method": cfg.complementary, "other_weight": cfg.other_weight,
        "partition": str(RunDir(cfg.run_dir).teacher.partition(cfg.complementary)),
        "class_owner": partition["class_owner"],
        "owns": [n for n, o in zip(data.class_names, partition["class_owner"]) if o == arch]}
    log(rt, f"complementary {cfg.complementary}: {arch} owns {', '.join(distillation['complementary']['owns'])}"
            f" (weight 1; other images {cfg.other_weight})")
    return image_weights(data.splits["train"].targets, partition["class_owner"], arch, cfg.other_weight)


@torch.inference_mode()
def train_logits(teacher: nn.Module, data: DataBundle, batch_size: int, rt: Runtime, amp: bool) -> torch.Tensor:
    """The teacher's logits on every `train` image, unaugmented, in split order (on the CPU)."""
    prec = choose_precision(rt.device, amp, training=True)
    loader = make_loader(data, "train", batch_size, device=rt.device)
    return torch.cat([prec.forward(teacher.eval(), batch[0]).cpu() for batch in loader])


def ensure_partition(cfg: StudentConfig, tpath: Path, teacher: nn.Module, data: DataBundle, rt: Runtime) -> dict:
    """The run's partition for --complementary: read it when it was made from this teacher, else make it
    (rank 0 writes; every rank computes the same deterministic result)."""
    path = RunDir(cfg.run_dir).teacher.partition(cfg.complementary)
    sha = file_sha256(tpath)
    found = load_partition(path)
    owners = [resolve_arch(o) for o in cfg.owners]
    if found is not None and found.get("teacher_sha256") == sha and found.get("method") == cfg.complementary \
            and found.get("owners") == owners and found.get("temperature") == cfg.temperature:
        log(rt, f"complementary {cfg.complementary}: partition reused from {path}")
        return found
    if len(set(owners)) < 2:  # refused before paying for the teacher's pass over `train`
        raise MoskdError(f"--owners {' '.join(cfg.owners)}: name at least two different students")
    logits = train_logits(teacher, data, cfg.eval_batch_size, rt, cfg.amp)
    partition = build_partition(logits, data.splits["train"].targets, data.num_classes, owners,
                                cfg.temperature, sha, data.class_names)
    if rt.is_main:
        write_json(path, partition)
    log(rt, f"complementary {cfg.complementary}: partition of the classes from the teacher -> {path}: "
            + "; ".join(f"{o}: {', '.join(c)}" for o, c in partition["clusters"].items()))
    return partition

