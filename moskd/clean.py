"""`moskd clean --run-dir RUN` (or `moskd clean RUN`): shrink a run directory to what inference and reports need.

A finished stage (one with summary.json) needs its last.pt only to be resumed, which a finished
stage never is, so it is deleted; a best.pt written before checkpoints were slim (it still holds
optimizer or scheduler state) is rewritten with only the weights, card and config. Unfinished
stages are left alone, so `--resume` still works for them. Rewriting a teacher's best.pt changes
its hash, so a later StudentTrain rebuilds the teacher-logit cache once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from moskd.checkpoint import read_checkpoint_file, save_checkpoint
from moskd.engine import drop_last, slim
from moskd.config import Parser  # one-line errors, 'did you mean', values checked by name
from moskd.errors import MoskdError, cli_entry
from moskd.run import StageDir
from moskd.config import run_dir_argument

PROG = "moskd clean"


def clean_run(run_dir: str | Path, dry_run: bool = False, log=print) -> int:
    """Bytes freed (or that would be freed with dry_run)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MoskdError(f"{run_dir}: no such run directory; pass the folder given to --run-dir")
    freed = 0
    marker = StageDir(run_dir).summary.name  # every finished stage folder holds one, at any depth
    for summary in sorted(run_dir.rglob(marker)):
        stage = StageDir(summary.parent)
        last = stage.last
        if last.is_file():
            size = last.stat().st_size
            if dry_run or drop_last(stage.path):
                freed += size
                log(f"{'would drop' if dry_run else 'dropped'} {last} ({size / 1e6:.1f} MB)")
        best = stage.best
        ckpt = read_checkpoint_file(best) if best.is_file() else None
        if isinstance(ckpt, dict) and "card" in ckpt and slim(ckpt).keys() != ckpt.keys():
            before = best.stat().st_size
            if dry_run:
                log(f"would slim {best} ({before / 1e6:.1f} MB; keeps weights, card and config)")
                continue
            save_checkpoint(slim(ckpt), best)
            after = best.stat().st_size
            freed += before - after
            log(f"slimmed {best} ({before / 1e6:.1f} MB -> {after / 1e6:.1f} MB)")
    return freed


@cli_entry(PROG)
def main(argv=None):
    p = Parser(prog=PROG, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", nargs="?", help="run directory (the same as --run-dir RUN)")
    p.add_argument("--run-dir", default=None, help="run directory")
    p.add_argument("--dry-run", action="store_true", help="only list what would be dropped")
    a = p.parse_args(argv)
    a.run_dir = run_dir_argument(a.run, a.run_dir)
    freed = clean_run(a.run_dir, a.dry_run)
    print(f"{PROG}: {'would free' if a.dry_run else 'freed'} {freed / 1e6:.1f} MB in {a.run_dir}")
    return 0


if __name__ == "__main__":
    main()
