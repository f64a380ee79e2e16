"""Replace a bundle folder so that, at every moment, DIR holds the old bundle or the new one whole.

    swap_in(new_dir, DIR)   # new_dir: a finished bundle written beside DIR (same filesystem)

Steps, each one rename (atomic on POSIX):
1. DIR -> .DIR.old-<pid>  (when DIR exists)
2. new_dir -> DIR
3. .DIR.old-<pid> removed.
A kill between 1 and 2 leaves no DIR but a whole old bundle beside it: `recover(DIR)`, which `moskd
export` calls first, renames the newest leftover back. A kill after 2 leaves a stray old folder, which
recover removes (DIR is whole). A half-written new bundle is a `.DIR.*.tmp` folder export owns and
removes; it never has DIR's name.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def _olds(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)


def recover(out: str | Path) -> str | None:
    """Put back a bundle a killed swap left aside; returns what it did (None: nothing to do)."""
    out = Path(out)
    olds = _olds(out) if out.parent.is_dir() else []
    if not olds:
        return None
    if not out.exists():
        os.replace(olds[-1], out)
        for p in olds[:-1]:
            shutil.rmtree(p, ignore_errors=True)
        return f"restored {out} from {olds[-1].name}, left by an interrupted export"
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)
    return f"removed {len(olds)} old bundle folder(s) beside {out} left by an interrupted export"


def swap_in(new: str | Path, out: str | Path) -> None:
    new, out = Path(new), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            out.unlink()  # a plain file in the way (export --force): nothing to keep whole
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
