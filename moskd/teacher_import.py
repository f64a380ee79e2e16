"""Import a teacher trained elsewhere into a run: RUN/teacher/best.pt becomes a moskd checkpoint
holding its weights (an ONNX teacher: RUN/teacher/imported.onnx beside it) and a model card that
records its own preprocessing, class order, source and sha256. From then on every stage reads it
through moskd.loaded.load_teacher like a teacher the run trained, and RUN/teacher/summary.json
(written last: the stage's completion marker) keeps its score on `select`.

Before anything is written the teacher is scored on `select` (students.teacher_check): one far
from the bar exits 2 and the run's folder is left as it was.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from torch import nn

from moskd.atomic import atomic_write, file_sha256, write_json
from moskd.checkpoint import load_checkpoint, save_checkpoint
from moskd.errors import MoskdError
from moskd.models import create_model
from moskd.run import RunDir, StageDir
from moskd.teacher_input import ClassOrder, OnnxTeacher
from moskd.teacher_source import (TeacherRequest, kind_of, load_strict, onnx_macs, onnx_signature,
                                  preprocessing, read_class_order, read_config, read_weights)

ONNX_FILE = "imported.onnx"
SEED_ARCHS = ("resnet50", "densenet121", "googlenet")  # moskd.models registers them with a choice of stem


def teacher_provenance(card: dict, path: Path) -> dict:
    """Where a teacher came from, for student cards and report.json: teacher_source, teacher_sha256
    (of the imported file; of the checkpoint for a teacher moskd trained) and its own preprocessing."""
    prep = card.get("teacher_preprocessing") or {
        "input_size": list(card["input_size"]), "mean": list(card["mean"]), "std": list(card["std"]),
        "interpolation": card.get("interpolation", "bilinear")}
    return {"teacher_source": card.get("teacher_source") or str(path),
            "teacher_sha256": card.get("teacher_sha256") or file_sha256(path), "teacher_preprocessing": prep}


def moskd_checkpoint(path: Path) -> Path:
    """The best.pt a moskd run folder, teacher folder or checkpoint names."""
    for candidate in (RunDir(path).teacher.best, StageDir(path).best):  # a run, or a teacher folder
        if path.is_dir() and candidate.is_file():
            return candidate
    if path.is_dir():
        raise MoskdError(f"--teacher {path}: a folder without teacher/best.pt or best.pt; pass a finished run "
                         f"or a checkpoint file")
    return path


def _teacher_and_card(req: TeacherRequest, path: Path, data) -> tuple[nn.Module, dict, dict]:
    """(model in the dataset's class order, card, state dict to save) for a weights or ONNX file."""
    cfg = read_config(req.config)
    onnx = kind_of(path) == "onnx"
    if onnx:
        size, classes = onnx_signature(path)
        arch, kwargs = f"onnx:{path.name}", {}
    elif not req.arch:
        raise MoskdError(f"--teacher {path}: a weights file needs --teacher-arch NAME (a registry, torchvision "
                         f"or timm name) to build the model it fits")
    else:
        size, classes, arch = None, None, req.arch
        # the seed architectures' own (torchvision) stem unless the config says otherwise: torchvision's
        # weights fit it; a teacher moskd trained on small images gives {"stem": "cifar"}
        kwargs = dict(cfg["model_kwargs"]) if "model_kwargs" in cfg else \
            ({"stem": "imagenet"} if arch in SEED_ARCHS else {})
    prep = preprocessing(cfg, req.config or f"--teacher {path}", size)
    own = int(cfg.get("num_classes") or classes or data.num_classes)
    index = list(range(own))
    if req.classes:
        index = read_class_order(req.classes, list(data.class_names), own)
    elif own != data.num_classes:
        raise MoskdError(f"--teacher {path}: the teacher has {own} classes, {data.name} has {data.num_classes}; "
                         f"pass --teacher-classes FILE naming the teacher's classes in its output order")
    card = {"role": "teacher", "arch": arch, "dataset": data.name, "num_classes": data.num_classes,
            "class_names": list(data.class_names), "in_chans": prep["input_size"][0], **prep,
            "model_kwargs": kwargs, "format": "onnx" if onnx else "torch", "teacher_num_classes": own,
            "class_index": index, "onnx_file": ONNX_FILE if onnx else None, "teacher_source": str(path.resolve()),
            "teacher_sha256": file_sha256(path), "teacher_preprocessing": prep}
    if onnx:
        card["teacher_macs"] = onnx_macs(path, prep["input_size"])  # per image, for the routing's cost
    model, state = (OnnxTeacher(path, own, card.get("teacher_macs")), {}) if onnx else \
        _torch_teacher(path, arch, own, prep, kwargs)
    if index != list(range(own)):
        model = ClassOrder(model, index)
    return model.eval(), card, state


def _torch_teacher(path: Path, arch: str, classes: int, prep: dict, kwargs: dict) -> tuple[nn.Module, dict]:
    """`arch` built for the teacher's classes and channels, every tensor loaded from `path`."""

    try:
        model = create_model(arch, num_classes=classes, in_chans=prep["input_size"][0], **kwargs)
    except TypeError as e:  # a model_kwargs key the architecture does not take
        raise MoskdError(f"--teacher-arch {arch}: model_kwargs {kwargs} do not fit it ({e})") from None
    load_strict(model, read_weights(path), path, arch)
    return model, model.state_dict()


def same_import(dest: StageDir, card: dict) -> bool:
    """Whether RUN/teacher already holds this very import (same file, preprocessing, classes, arch)."""
    if not (dest.finished and dest.best.is_file()):
        return False
    old = load_checkpoint(dest.best, role="teacher")["card"]
    keys = ("teacher_sha256", "teacher_preprocessing", "class_index", "arch", "model_kwargs", "dataset")
    return all(old.get(k) == card.get(k) for k in keys)


def resolve_teacher(req: TeacherRequest, dest: StageDir, data, check: Callable[[nn.Module, dict], dict],
                    log=print) -> Path:
    """The teacher checkpoint to distil from: a moskd one as it is; a weights or ONNX file imported
    into `dest` (RUN/teacher) once check(model, card) (students.teacher_check: its score on `select`,
    raising MoskdError below the bar) has passed."""
    path = Path(req.source)
    if kind_of(path) == "moskd":
        return moskd_checkpoint(path)
    model, card, state = _teacher_and_card(req, path, data)
    if same_import(dest, card):
        log(f"teacher: {dest.best} already holds {path} (sha256 {card['teacher_sha256'][:12]}); reused")
        return dest.best
    if dest.best.is_file():
        old = load_checkpoint(dest.best)["card"]
        if not old.get("teacher_source"):
            raise MoskdError(f"{dest.path} holds a teacher this run trained; import {path} into another --run-dir "
                             f"(or delete {dest.path} to replace it)")
    scores = check(model, card)
    write_import(dest, path, card, state, scores)
    log(f"teacher: imported {path} into {dest.best}")
    return dest.best


def write_import(dest: StageDir, source: Path, card: dict, state: dict, scores: dict) -> None:
    """RUN/teacher/{imported.onnx,best.pt,summary.json}; summary.json last, as a finished stage's marker.
    An older teacher's logit caches stay: they are keyed to the checkpoint's sha256 and rebuild."""
    dest.path.mkdir(parents=True, exist_ok=True)
    if dest.summary.exists():
        dest.summary.unlink()  # unfinished until the new files are all in place
    if card["format"] == "onnx":
        with open(source, "rb") as src:
            atomic_write(dest.path / ONNX_FILE, lambda f: shutil.copyfileobj(src, f))
    save_checkpoint({"model": state, "ema": None, "config": {}, "card": card, "best_metric": scores["accuracy"]},
                    dest.best)
    write_json(dest.summary, {"stage": "teacher import", "imported": True, "select": scores,
                              **{k: card[k] for k in ("teacher_source", "teacher_sha256", "teacher_preprocessing",
                                                      "arch", "format")}})
