"""`moskd pipeline`: teacher -> teacher-logit cache -> students -> selector -> policy and report, on one run dir.

Part of the command layer: an explicit sequence of in-process calls to each stage's `run(cfg, rt)`,
each with the typed config its own command would have parsed from the same recipe and flags
(moskd.sections.resolve_config), so the pipeline can do nothing the stage commands cannot. A stage
whose folder holds a summary.json is finished and
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
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from moskd.atomic import read_json, write_json
from moskd.errors import MoskdError, cli_entry
from moskd.run import RunDir, StageDir
from moskd.sections import PipelineConfig, parse_config, resolve_config
from moskd.seeds import aggregate_seeds
from moskd.values import SEED_STUDENTS
from selector.config import SelectorConfig
from students.config import StudentConfig
from teacher.config import TeacherConfig


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


@dataclass(frozen=True)
class PipelineStep:
    """One step of the pipeline: `call(force, resume)` runs it. `out`: the stage folder it writes,
    skipped when finished and resumed when it holds only last.pt (None: always run)."""
    title: str
    call: Callable[[bool, bool], object]
    out: Optional[Path] = None


def _resumes(step: PipelineStep, cfg: PipelineConfig, shared: frozenset[Path] = frozenset()) -> bool:
    """Whether the step continues an interrupted stage (last.pt without summary.json) with --resume."""
    if step.out is None or step.out in shared or cfg.force:
        return False
    out = StageDir(step.out)
    return not out.finished and out.last.exists()


def _run_step(step: PipelineStep, cfg: PipelineConfig, shared: frozenset[Path] = frozenset()) -> str:
    """Run one step unless its stage is finished; resume it if interrupted. Returns what happened.
    A stage folder in `shared` was linked in from another run (a shared teacher): never retrained
    here, --force included."""
    if step.out is not None and step.out in shared:
        return "shared (linked in, not retrained)"
    if step.out is not None and StageDir(step.out).finished and not cfg.force:
        return "skipped (finished)"
    resume = _resumes(step, cfg, shared)
    step.call(cfg.force and step.out is not None, resume)
    return "resumed" if resume else "done"


def _stage(cls: type, section: str, cfg: PipelineConfig, recipe: Optional[str], **values) -> Callable:
    """A step's call: the stage's config as its command would resolve it, then its run(cfg, rt)."""
    common = dict(run_dir=cfg.run_dir, dataset=cfg.dataset, data_dir=cfg.data_dir, device=cfg.device,
                  seed=cfg.seed, download=cfg.download, keep_last=cfg.keep_last, **values)
    if cfg.limit:
        common["limit"] = cfg.limit
    if cfg.epochs:
        common["epochs"] = cfg.epochs

    def call(force: bool, resume: bool):
        from moskd.runtime import run_stage

        stage_cfg = resolve_config(cls, recipe, section, force=force, resume=resume, **common)
        return run_stage(stage_cfg, _stage_run(cls))

    return call


def _stage_run(cls: type) -> Callable:
    """The stage's run(cfg, rt) for its config class (imported here: they load torch)."""
    if cls is TeacherConfig:
        from teacher.train import run
    elif cls is StudentConfig:
        from students.train import run
    else:
        from selector.train import run
    return run


def _report(cfg: PipelineConfig) -> Callable:
    """The policy step (fit RUN/policy.json on select, as `moskd policy` does), then the report."""
    def call(force: bool, resume: bool):
        from inference.report import report_run
        from moskd.runtime import setup_runtime, show_progress

        rt = setup_runtime(cfg.device)
        return report_run(cfg.run_dir, refit=True, limit=cfg.limit, device=rt.device, progress=show_progress(rt))

    return call


def steps(cfg: PipelineConfig, recipe: Optional[str]) -> list[PipelineStep]:
    """What the pipeline runs, in order: every stage of the run, each reading what the earlier wrote."""
    run = RunDir(cfg.run_dir)
    complementary = {"complementary": cfg.complementary} if cfg.complementary else {}
    # the cache step always runs: it reuses a valid cache in a second and rebuilds a stale one
    out = [PipelineStep("teacher", _stage(TeacherConfig, "teacher", cfg, recipe), run.teacher.path),
           PipelineStep("teacher-logit cache", _stage(StudentConfig, "students", cfg, recipe, cache_only=True))]
    for key, arch in SEED_STUDENTS.items():  # --complementary reaches the distilled students; baselines stay plain
        out.append(PipelineStep(f"student {arch} (distilled)",
                        _stage(StudentConfig, "students", cfg, recipe, model=key, **complementary),
                        run.student(run.student_name(arch)).path))
        if cfg.baselines:
            out.append(PipelineStep(f"student {arch} (baseline, no teacher)",
                            _stage(StudentConfig, "students", cfg, recipe, model=key, no_teacher=True),
                            run.student(run.student_name(arch, True)).path))
    out.append(PipelineStep("selector", _stage(SelectorConfig, "selector", cfg, recipe), run.selector.path))
    out.append(PipelineStep("routing policy and evaluation report", _report(cfg)))
    return out


def run(cfg: PipelineConfig, config: Optional[str] = None, teacher: Optional[Path] = None) -> dict:
    """The pipeline on one run directory; `teacher`: a finished teacher folder to link in and use
    as it is (--teacher-from, or the first seed's shared teacher)."""
    run_dir = RunDir(cfg.run_dir)
    shared = frozenset()
    if teacher is not None:
        share_teacher(teacher, run_dir.teacher.path)
        shared = frozenset({run_dir.teacher.path})
    recipe = _recipe(config, cfg.dataset, cfg.device)
    if recipe:
        print(f"recipe: {recipe}", flush=True)
    if teacher is None and import_teacher(cfg, recipe):
        shared = frozenset({run_dir.teacher.path})  # imported: never trained over, --force included
    todo = steps(cfg, recipe)
    # RUN/pipeline_timings.json: the wall time each stage cost, summed over the runs that worked on it.
    # It is written after every step, so an interrupted pipeline keeps what its finished stages took
    # (and the interrupted stage its part); a stage skipped as finished keeps its recorded time, a
    # resumed one adds to its part. Without this, a rerun that adds seeds or only redoes the report
    # turns the recorded cost of the training into zeros.
    before = read_json(run_dir.pipeline_timings) if run_dir.pipeline_timings.is_file() else {}
    timings = {s.title: before[s.title] for s in todo if s.title in before}
    for i, step in enumerate(todo, 1):
        _header(i, len(todo), step.title)
        carried = before.get(step.title, 0.0) if _resumes(step, cfg, shared) else 0.0
        t0, what = time.perf_counter(), None
        try:
            what = _run_step(step, cfg, shared)
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
def import_teacher(cfg: PipelineConfig, recipe: Optional[str]) -> bool:
    """Import --teacher-from FILE (weights or ONNX) into RUN/teacher/, scored on select, as
    `StudentTrain --teacher FILE --teacher-import-only` does; False when --teacher-from is not a file
    (a teacher folder is linked in instead)."""
    if not (cfg.teacher_from and Path(cfg.teacher_from).is_file()):
        return False
    own = {key: getattr(cfg, key) for key in ("teacher_arch", "teacher_config", "teacher_classes",
                                               "teacher_min_accuracy") if getattr(cfg, key) is not None}
    print(f"teacher: importing {cfg.teacher_from}", flush=True)
    _stage(StudentConfig, "students", cfg, recipe, teacher=cfg.teacher_from, teacher_import_only=True, **own)(
        False, False)
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
