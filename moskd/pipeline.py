"""`moskd pipeline`: teacher -> teacher-logit cache -> students -> selector -> report, on one run dir.

It only dispatches: the steps come from what the stages declare (moskd.stages), and every step
runs through its stage command's main() with the same flags a user would type, so the pipeline can
do nothing the four commands cannot. A stage whose folder holds a summary.json is finished and
skipped (RUN/pipeline_timings.json keeps the time it took when it ran); one with only last.pt was
interrupted and resumes (its time adds to the part recorded before); --force redoes everything.

With --seeds 0 1 2 it runs once per seed into RUN/seed<k>/ (each a complete run directory) and
writes RUN/seeds.json and RUN/seeds.md (mean and std of every row over the seeds). By default the
teacher is trained once, by the first seed, and shared: its folder (checkpoint and logit cache) is
hard-linked into the other seeds' run directories, so the seeds measure the students, the selector
and the routing, not the teacher's own seed-to-seed spread (said in seeds.json: teacher_shared).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from moskd.config import field, parse_config
from moskd.errors import MoskdError, cli_entry
from moskd.run import RunDir, StageDir
from moskd.atomic import read_json, write_json
from moskd.seeds import aggregate_seeds
from moskd.stages import Step, commands, pipeline_steps


@dataclass
class PipelineConfig:
    run_dir: str = field("runs/digits", "run directory shared by all stages")
    dataset: str = field("digits", "digits (bundled, offline) | fashion-mnist | cifar10 | cifar100 | folder:PATH")
    data_dir: str = field("data", "where fashion-mnist/CIFAR files live (or are downloaded to)")
    download: bool = field(False, "download fashion-mnist/CIFAR through torchvision (needs network)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    seed: int = field(0, "seed for every stage")
    limit: Optional[int] = field(None, "use at most N images per split (smoke runs and tests)")
    epochs: Optional[int] = field(None, "override every stage's epochs (smoke runs)")
    baselines: bool = field(True, "also train each student without the teacher (--no-teacher): the "
                                  "comparison every report needs")
    force: bool = field(False, "redo every stage even if finished")
    seeds: list[int] = field([], "run once per seed into RUN/seed<k>/ and write RUN/seeds.{json,md} "
                                 "(mean and std of every row); overrides --seed")
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


def _recipe(config: Optional[str], dataset: str, device: str) -> Optional[str]:
    """--config if given, else the repository's recipe for the dataset: configs/<dataset>-cpu.yaml
    when running on the CPU and one exists (GPU recipes would take days there), else <dataset>.yaml."""
    if config:
        return config
    folder = Path(__file__).resolve().parent.parent / "configs"
    import torch  # deferred: only the pipeline itself needs to know the device

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    for name in ([f"{dataset}-cpu.yaml"] if on_cpu else []) + [f"{dataset}.yaml"]:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def _header(i: int, n: int, title: str) -> None:
    print(f"\n=== [{i}/{n}] {title} " + "=" * max(3, 60 - len(title)), flush=True)


def _resumes(step: Step, cfg: PipelineConfig, shared: frozenset[Path] = frozenset()) -> bool:
    """Whether the step continues an interrupted stage (last.pt without summary.json) with --resume."""
    if step.out is None or step.out in shared or cfg.force:
        return False
    out = StageDir(step.out)
    return not out.finished and out.last.exists()


def _run_step(step: Step, argv: list[str], cfg: PipelineConfig, shared: frozenset[Path] = frozenset()) -> str:
    """Run one step unless its stage is finished; resume it if interrupted. Returns what happened.
    A stage folder in `shared` was linked in from another run (a shared teacher): never retrained
    here, --force included."""
    if step.out is not None and step.out in shared:
        return "shared (linked in, not retrained)"
    if step.out is None:
        importlib.import_module(step.module).main(argv)
        return "done"
    out = StageDir(step.out)
    if out.finished and not cfg.force:
        return "skipped (finished)"
    if cfg.force:
        argv = [*argv, "--force"]
    elif _resumes(step, cfg, shared):
        argv = [*argv, "--resume"]
    importlib.import_module(step.module).main(argv)
    return "resumed" if "--resume" in argv else "done"


def run(cfg: PipelineConfig, config: Optional[str] = None, teacher: Optional[Path] = None) -> dict:
    """The pipeline on one run directory; `teacher`: a finished teacher folder to link in and use
    as it is (--teacher-from, or the first seed's shared teacher)."""
    run_dir = RunDir(cfg.run_dir)
    shared = frozenset()
    if teacher is not None:
        share_teacher(teacher, run_dir.teacher.path)
        shared = frozenset({run_dir.teacher.path})
    common = ["--run-dir", cfg.run_dir, "--dataset", cfg.dataset, "--data-dir", cfg.data_dir,
              "--device", cfg.device, "--seed", str(cfg.seed)]
    recipe = _recipe(config, cfg.dataset, cfg.device)
    if recipe:
        common += ["--config", recipe]
        print(f"recipe: {recipe}", flush=True)
    if cfg.download:
        common.append("--download")
    limit = ["--limit", str(cfg.limit)] if cfg.limit else []
    flags = {"train": common + limit + (["--epochs", str(cfg.epochs)] if cfg.epochs else [])
             + ["--keep-last", cfg.keep_last],
             "report": ["--run-dir", cfg.run_dir, "--device", cfg.device] + limit}

    if teacher is None and import_teacher(cfg, flags["train"]):
        shared = frozenset({run_dir.teacher.path})  # imported: never trained over, --force included
    steps = pipeline_steps(run_dir, {"baselines": cfg.baselines, "complementary": cfg.complementary})
    # RUN/pipeline_timings.json: the wall time each stage cost, summed over the runs that worked on it.
    # It is written after every step, so an interrupted pipeline keeps what its finished stages took
    # (and the interrupted stage its part); a stage skipped as finished keeps its recorded time, a
    # resumed one adds to its part. Without this, a rerun that adds seeds or only redoes the report
    # turns the recorded cost of the training into zeros.
    before = read_json(run_dir.pipeline_timings) if run_dir.pipeline_timings.is_file() else {}
    timings = {s.title: before[s.title] for s in steps if s.title in before}
    for i, step in enumerate(steps, 1):
        _header(i, len(steps), step.title)
        carried = before.get(step.title, 0.0) if _resumes(step, cfg, shared) else 0.0
        t0, what = time.perf_counter(), None
        try:
            what = _run_step(step, flags[step.kind] + list(step.argv), cfg, shared)
        finally:
            took = round(time.perf_counter() - t0, 1)
            skipped = what is not None and what.startswith("skipped")
            timings[step.title] = before.get(step.title, took) if skipped else round(carried + took, 1)
            write_json(run_dir.pipeline_timings, timings)
        print(f"{step.title}: {what} in {took:.1f}s", flush=True)
    report = run_dir.report()
    print("\nstage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print(f"total {sum(timings.values()):.1f}s; report: {report.md}, plots: {report.plots}")
    return timings


def share_teacher(source: Path, target: Path) -> None:
    """Hard-link a finished teacher folder (checkpoint, summary, cache) into another run directory;
    last.pt (optimizer state, only needed to resume) stays behind. A file already there that is not
    the source's (a teacher trained before, or linked from an older one) is replaced."""
    last = StageDir(source).last
    for f in source.rglob("*"):
        if f.is_file() and f != last and not f.name.startswith("."):
            dest = target / f.relative_to(source)
            if dest.exists():
                if os.path.samefile(f, dest):
                    continue
                dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dest)
            except OSError:  # another file system: copy
                shutil.copy2(f, dest)


# ---- your own teacher (issue 28): --teacher-from FILE is imported by StudentTrain --teacher-import-only
def import_teacher(cfg: PipelineConfig, train_flags: list[str]) -> bool:
    """Import --teacher-from FILE (weights or ONNX) into RUN/teacher/, scored on select; False when
    --teacher-from is not a file (a teacher folder is linked in instead)."""
    if not (cfg.teacher_from and Path(cfg.teacher_from).is_file()):
        return False
    extra = [flag for key in ("teacher_arch", "teacher_config", "teacher_classes", "teacher_min_accuracy")
             if getattr(cfg, key) is not None for flag in ("--" + key.replace("_", "-"), str(getattr(cfg, key)))]
    print(f"teacher: importing {cfg.teacher_from}", flush=True)
    student = commands()["student"].module  # StudentTrain, from the stages' declarations
    importlib.import_module(student).main([*train_flags, "--teacher", cfg.teacher_from, *extra, "--teacher-import-only"])
    return True


def borrowed_teacher(cfg: PipelineConfig) -> Optional[Path]:
    """--teacher-from, checked: a teacher folder that has finished (summary.json and best.pt)."""
    if not cfg.teacher_from or Path(cfg.teacher_from).is_file():
        return None  # none, or a file to import (import_teacher)
    src = StageDir(Path(cfg.teacher_from))
    if not (src.finished and src.best.is_file()):
        raise MoskdError(f"--teacher-from {src}: not a finished teacher folder (needs best.pt and summary.json); "
                         f"pass RUN/teacher of a run whose teacher has finished")
    return src.path


def run_seeds(cfg: PipelineConfig, config: Optional[str] = None, command: str = "") -> dict:
    root = RunDir(cfg.run_dir)
    first = root.seed(cfg.seeds[0])
    source = borrowed_teacher(cfg)
    for k in cfg.seeds:
        seed_dir = root.seed(k)
        print(f"\n##### seed {k} -> {seed_dir.root}", flush=True)
        teacher = source
        if teacher is None and cfg.shared_teacher and k != cfg.seeds[0]:
            if not first.teacher.finished:
                raise MoskdError(f"{first.teacher.path}: the shared teacher did not finish; rerun the same command")
            teacher = first.teacher.path  # trained (or, with --force, retrained) by the first seed only
        run(dataclasses.replace(cfg, run_dir=str(seed_dir.root), seed=k, seeds=[]), config, teacher)
    summary = aggregate_seeds(root.root, cfg.seeds, teacher_shared=cfg.shared_teacher or source is not None,
                              command=command)
    print(f"\nseeds: {root.seeds_json}, {root.seeds_md}")
    return summary


@cli_entry("moskd pipeline")
def main(argv=None):
    cfg = parse_config(PipelineConfig, argv, "moskd pipeline", __doc__, section="pipeline")
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv)[0].config
    if cfg.seeds:
        run_seeds(cfg, config, command=" ".join(["moskd pipeline", *(sys.argv[2:] if argv is None else argv)]))
    else:
        run(cfg, config, borrowed_teacher(cfg))


if __name__ == "__main__":
    main()
