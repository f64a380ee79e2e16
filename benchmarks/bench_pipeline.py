"""Pipeline stage timer: run `moskd pipeline` once and print each stage's wall time side by side.

    python benchmarks/bench_pipeline.py                          # full digits pipeline into runs/bench-digits
    python benchmarks/bench_pipeline.py --limit 200 --epochs 2   # a quick slice

Prints seconds per stage, its share of the total, and its cost relative to the teacher stage,
all from the same run, plus the per-epoch training throughput each stage logged in metrics.jsonl.
Stages that were already finished in --run-dir are skipped (and show ~0 s): pass --force to time
everything, which the default run directory gets anyway when it is new.
"""
from __future__ import annotations

import argparse
import json
import statistics

from moskd.pipeline import run
from moskd.sections import PipelineConfig
from moskd.run import RunDir, StageDir


def epoch_throughput(stage: StageDir) -> str:
    metrics = stage.metrics
    if not metrics.exists():
        return ""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return f"{statistics.median(r['images_per_s'] for r in rows):.0f} img/s (median of {len(rows)} epochs)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench-digits")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    timings = run(PipelineConfig(run_dir=args.run_dir, dataset=args.dataset, limit=args.limit,
                                 epochs=args.epochs, force=args.force))
    total, teacher = sum(timings.values()), timings.get("teacher") or float("nan")
    run_dir = RunDir(args.run_dir)
    dirs = {"teacher": run_dir.teacher, "selector": run_dir.selector}
    for name in timings:
        if name.startswith("student "):
            dirs[name] = run_dir.student(run_dir.student_name(name.split()[1], baseline="baseline" in name))
    print(f"\n{'stage':<36} {'seconds':>8} {'share':>7} {'x teacher':>10}  training throughput")
    for name, sec in timings.items():
        print(f"{name:<36} {sec:>8.1f} {sec / total:>7.1%} {sec / teacher:>10.2f}  "
              f"{epoch_throughput(dirs[name]) if name in dirs else ''}")
    print(f"{'total':<36} {total:>8.1f}")


if __name__ == "__main__":
    main()
