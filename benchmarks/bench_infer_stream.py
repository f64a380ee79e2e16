"""`inference` over large folders, side by side in one run: peak RSS over N files for each N (--sizes),
for this checkout and, with --old-code, another checkout's inference; then a job killed (SIGKILL) once
its output holds half the rows, and `--resume`: what is on disk after each, and whether the resumed
file holds every input once, in input order.

    python benchmarks/bench_infer_stream.py --run RUN --folder-of N=FOLDER ... [--old-code PATH]

RUN is any trained run directory (its router predicts); each FOLDER holds N image files. Peak RSS is
the child process's high-water mark (ru_maxrss of the waited-for child), and, as the child reports it
once `inference` has returned, before the interpreter exits: finalizing torch's modules at exit adds
about 140 MiB to the high-water mark after every row is written, whatever the number of files.
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


CHILD = ("import resource, sys\nfrom inference.cli import main\ntry:\n    code = main()\nexcept SystemExit as e:\n"
         "    code = e.code\nprint('peak RSS before exit', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "file=sys.stderr)\nsys.exit(code)")


def command(code: Path, run: str, folder: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CHILD,
            "--run-dir", run, folder, "--output", str(out), "--device", "cpu", "--quiet", *extra]


def env(code: Path) -> dict:
    """The child runs in `code` (cwd too: `python -c` puts the working folder before PYTHONPATH)."""
    return {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}


def peak_rss(code: Path, run: str, folder: str, out: Path) -> tuple[float, float, float, int]:
    """(MiB, MiB before the interpreter's exit, seconds, rows written) of one inference child."""
    t0 = time.perf_counter()
    with open(out.with_suffix(".stderr"), "w+") as err:
        proc = subprocess.Popen(command(code, run, folder, out), env=env(code), cwd=code, stdout=subprocess.DEVNULL,
                                stderr=err)
        _, _, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        before_exit = [ln for ln in err.read().splitlines() if ln.startswith("peak RSS before exit")]
    rows = sum(1 for _ in open(out)) - 1 if out.is_file() else 0
    inner = int(before_exit[-1].split()[-1]) / 1024 if before_exit else float("nan")
    return usage.ru_maxrss / 1024, inner, time.perf_counter() - t0, rows


def kill_and_resume(run: str, folder: str, n: int, out: Path) -> None:
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(command(ROOT, run, folder, out), env=env(ROOT), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        time.sleep(0.2)
        if out.is_file() and out.stat().st_size and sum(1 for _ in open(out)) - 1 >= n // 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    after_kill = sum(1 for _ in open(out)) - 1
    print(f"killed with SIGKILL once half the rows were written: {out} holds {after_kill} of {n} rows "
          f"({out.stat().st_size} bytes)")
    t0 = time.perf_counter()
    proc = subprocess.run(command(ROOT, run, folder, out, "--resume"), env=env(ROOT), cwd=ROOT, capture_output=True,
                          text=True)
    lines = open(out).read().splitlines()[1:]
    paths = [ln.split(",", 1)[0] for ln in lines]
    listed = [str(p) for p in sorted(Path(folder).rglob("*.jpg"), key=lambda p: (p.parent.name, p.name))]
    print(f"--resume ({time.perf_counter() - t0:.1f} s, exit {proc.returncode}): {len(lines)} rows, "
          f"{len(set(paths))} distinct paths, in input order: {paths == listed}; "
          f"stderr: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--run", required=True)
    p.add_argument("--folder-of", nargs="+", required=True, metavar="N=FOLDER")
    p.add_argument("--old-code", type=Path, default=None)
    p.add_argument("--tmp", type=Path, default=Path("/tmp/bench-infer-stream"))
    p.add_argument("--no-kill", action="store_true", help="skip the kill + --resume part")
    a = p.parse_args(argv)
    a.run, a.tmp = str(Path(a.run).resolve()), a.tmp.resolve()  # the children run in the measured checkout
    a.old_code = a.old_code.resolve() if a.old_code else None
    a.tmp.mkdir(parents=True, exist_ok=True)
    folders = [(int(n), str(Path(f).resolve())) for n, f in (x.split("=", 1) for x in a.folder_of)]
    for label, code in [("this checkout", ROOT)] + ([("old code", a.old_code)] if a.old_code else []):
        for n, folder in folders:
            mib, inner, sec, rows = peak_rss(code, a.run, folder, a.tmp / f"{n}.csv")
            print(f"{label}: {n} files: peak RSS {mib:.0f} MiB ({inner:.0f} MiB before the interpreter's exit), "
                  f"{sec:.1f} s, {rows} rows written", flush=True)
    if not a.no_kill:
        n, folder = folders[-1]
        kill_and_resume(a.run, folder, n, a.tmp / "killed.csv")
    print(f"(resource: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB max over children)")


if __name__ == "__main__":
    main()
