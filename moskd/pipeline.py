"""`moskd pipeline`: teacher -> teacher-logit cache -> students -> selector -> report, on one run dir.

It only dispatches: every stage runs through its own command's main() with the same flags a user
would type, so the pipeline can do nothing the four commands cannot. A stage whose folder holds a
summary.json is finished and skipped; one with only last.pt was interrupted and resumes; --force
redoes everything.

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
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from moskd.config import field, parse_config
from moskd.errors import cli_entry
from moskd.seeds import aggregate_seeds



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
    shared_teacher: bool = field(True, "with --seeds: train the teacher once (first seed) and share it")
    keep_last: str = field("yes", "keep each finished stage's last.pt (optimizer state); no = drop it once the "
                                  "stage has finished, as `moskd clean RUN` does (a digits run shrinks ~4x)",
                           choices=["yes", "no"])


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


def _run_stage(module: str, argv: list[str], out_dir: Optional[Path], cfg: PipelineConfig) -> str:
    """Run one stage unless finished; resume it if interrupted. Returns what happened."""
    if out_dir is None:
        importlib.import_module(module).main(argv)
        return "done"
    if (out_dir / "summary.json").exists() and not cfg.force:
        return "skipped (finished)"
    if cfg.force:
        argv = [*argv, "--force"]
    elif (out_dir / "last.pt").exists():
        argv = [*argv, "--resume"]
    importlib.import_module(module).main(argv)
    return "resumed" if "--resume" in argv else "done"


def run(cfg: PipelineConfig, config: Optional[str] = None) -> dict:
    from moskd.models import SEED_STUDENTS  # deferred: `moskd pipeline --help` loads no torch

    run_dir = Path(cfg.run_dir)
    common = ["--run-dir", cfg.run_dir, "--dataset", cfg.dataset, "--data-dir", cfg.data_dir,
              "--device", cfg.device, "--seed", str(cfg.seed)]
    recipe = _recipe(config, cfg.dataset, cfg.device)
    if recipe:
        common += ["--config", recipe]
        print(f"recipe: {recipe}", flush=True)
    if cfg.download:
        common.append("--download")
    if cfg.limit:
        common += ["--limit", str(cfg.limit)]
    train = common + (["--epochs", str(cfg.epochs)] if cfg.epochs else []) + ["--keep-last", cfg.keep_last]

    stages = [("teacher", "teacher.train", train, run_dir / "teacher"),
              # always run: reuses a valid cache in a second, rebuilds a stale one
              ("teacher-logit cache", "students.train", train + ["--cache-only"], None)]
    for key, arch in SEED_STUDENTS.items():
        stages.append((f"student {arch} (distilled)", "students.train", train + ["--model", key],
                       run_dir / "students" / arch))
        if cfg.baselines:
            stages.append((f"student {arch} (baseline, no teacher)", "students.train",
                           train + ["--model", key, "--no-teacher"], run_dir / "students" / f"{arch}-baseline"))
    stages.append(("selector", "selector.train", train, run_dir / "selector"))

    timings: dict[str, float] = {}
    n = len(stages) + 1
    for i, (title, module, argv, out_dir) in enumerate(stages, 1):
        _header(i, n, title)
        t0 = time.perf_counter()
        what = _run_stage(module, argv, out_dir, cfg)
        timings[title] = round(time.perf_counter() - t0, 1)
        print(f"{title}: {what} in {timings[title]:.1f}s", flush=True)

    _header(n, n, "evaluation report on test")
    t0 = time.perf_counter()
    report_args = [cfg.run_dir, "--device", cfg.device] + (["--limit", str(cfg.limit)] if cfg.limit else [])
    importlib.import_module("inference.report").main(report_args)
    timings["report"] = round(time.perf_counter() - t0, 1)
    (run_dir / "pipeline_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("\nstage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print(f"total {sum(timings.values()):.1f}s; report: {run_dir / 'report.md'}, plots: {run_dir / 'plots'}")
    return timings


def share_teacher(source: Path, target: Path) -> None:
    """Hard-link a finished teacher folder (checkpoint, summary, cache) into another run directory;
    last.pt (optimizer state, only needed to resume) stays behind."""
    for f in source.rglob("*"):
        if f.is_file() and f.name != "last.pt" and not f.name.startswith("."):
            dest = target / f.relative_to(source)
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dest)
            except OSError:  # another file system: copy
                shutil.copy2(f, dest)


def run_seeds(cfg: PipelineConfig, config: Optional[str] = None, command: str = "") -> dict:
    root = Path(cfg.run_dir)
    first = root / f"seed{cfg.seeds[0]}"
    for k in cfg.seeds:
        seed_dir = root / f"seed{k}"
        print(f"\n##### seed {k} -> {seed_dir}", flush=True)
        if cfg.shared_teacher and k != cfg.seeds[0] and (first / "teacher" / "summary.json").is_file():
            share_teacher(first / "teacher", seed_dir / "teacher")
        run(dataclasses.replace(cfg, run_dir=str(seed_dir), seed=k, seeds=[]), config)
    summary = aggregate_seeds(root, cfg.seeds, teacher_shared=cfg.shared_teacher, command=command)
    print(f"\nseeds: {root / 'seeds.json'}, {root / 'seeds.md'}")
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
        run(cfg, config)


if __name__ == "__main__":
    main()
