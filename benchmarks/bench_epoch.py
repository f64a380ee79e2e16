"""The in-memory data path against another checkout's, side by side in one run: seconds per training
epoch and the results, on digits and Fashion-MNIST (issue 27: streaming must not slow the sets that fit).

    python benchmarks/bench_epoch.py --old-code PATH [--rounds 3] [--work /tmp/bench-epoch]

Each round trains the same short jobs with this checkout's code and with PATH's (a checkout from before
the streaming path, e.g. `git worktree add /tmp/old 57d0ee6`), alternating A B A B so drift in the
machine's speed falls on both. An epoch's seconds are the stage's own figure (metrics.jsonl "seconds");
the first epoch is left out (it pays one-time warm-up). Results must be identical: each job's
per-epoch losses and accuracies are compared between the two codes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moskd.run import RunDir  # noqa: E402  (torch-free)
# (name, entry module, arguments): short jobs on the in-memory path (digits 8x8, Fashion-MNIST 28x28)
JOBS = [
    ("digits teacher (ResNet50, 4 epochs)", "teacher.cli",
     ["--dataset", "digits", "--epochs", "4", "--seed", "0"]),
    ("fashion-mnist GoogLeNet, imagenet stem, no teacher (at most 6,000 images per split, 3 epochs)", "students.cli",
     ["--dataset", "fashion-mnist", "--model", "2", "--stem", "imagenet", "--no-teacher", "--limit", "6000",
      "--epochs", "3", "--seed", "0"]),
]
# where each job's metrics.jsonl is: the run layout's own names (moskd.run.RunDir), the same in both codes
STAGE = {"teacher.cli": lambda run: run.teacher,
         "students.cli": lambda run: run.student(RunDir.student_name("googlenet", baseline=True))}


def run_job(code: Path, module: str, args: list[str], run_dir: Path) -> list[dict]:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())",
           *args, "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{code}: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    metrics = STAGE[module](RunDir(run_dir)).metrics
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def results(rows: list[dict]) -> list[tuple]:
    """What must be identical between the codes: every epoch's numbers except its timing."""
    drop = {"seconds", "images_per_s"}
    return [tuple(sorted((k, v) for k, v in r.items() if k not in drop)) for r in rows]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--old-code", type=Path, required=True, help="the other checkout (the code before the change)")
    p.add_argument("--rounds", type=int, default=3, help="A B pairs per job (default 3)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-epoch"), help="scratch run directories")
    a = p.parse_args(argv)
    for name, module, args in JOBS:
        secs = {"new": [], "old": []}
        same = True
        for r in range(a.rounds):
            new = run_job(ROOT, module, args, a.work / "new")
            old = run_job(a.old_code.resolve(), module, args, a.work / "old")
            secs["new"] += [row["seconds"] for row in new[1:]]
            secs["old"] += [row["seconds"] for row in old[1:]]
            same = same and results(new) == results(old)
        ratio = statistics.median(secs["old"]) / statistics.median(secs["new"])
        print(f"{name}: s/epoch (median of {len(secs['new'])}, first epochs left out) "
              f"this checkout {statistics.median(secs['new']):.2f} [{min(secs['new']):.2f}-{max(secs['new']):.2f}], "
              f"old code {statistics.median(secs['old']):.2f} [{min(secs['old']):.2f}-{max(secs['old']):.2f}]; "
              f"speed this/old {ratio:.3f}x (target >= 0.95); per-epoch results identical: {same}")
        print(f"  last epoch: {json.dumps({k: v for k, v in new[-1].items() if k not in ('seconds', 'images_per_s')})}")


if __name__ == "__main__":
    main()
