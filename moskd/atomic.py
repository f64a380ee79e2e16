"""The one file writer: a reader, or a kill mid-write, sees the old file whole or the new one whole.

Every file moskd writes goes through `atomic_write`: checkpoints, configs, JSON, arrays, tables,
plots and metrics.jsonl (summary.json marks a finished stage and report.json a finished evaluation,
so neither may ever be half-written). Also a file's sha256, the identity that the teacher cache,
the class partition and seeds.json key a checkpoint on.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from moskd.errors import MoskdError

_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it): new files get 0666 & ~umask
os.umask(_UMASK)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (the folder's entry, not only the file's bytes)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """`write(f)` into a temporary file in the same folder, fsync it, rename it over `path`, fsync
    the folder. A kill at any point leaves `path` as it was or as it is meant to be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)  # mkstemp's is 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON, indented, newline-terminated, written atomically (summary.json marks a finished stage)."""
    return write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Arrays as a compressed .npz, through atomic_write (numpy writes into the open temporary file)."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MoskdError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise MoskdError(f"{path}: not valid JSON ({e}); rerun the command that writes it") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- folders: a bundle swapped in whole
# Replace a bundle folder so that, at every moment, DIR holds the old bundle or the new one whole.
#
#     swap_folder(new_dir, DIR)   # new_dir: a finished bundle written beside DIR (same filesystem)
#
# Steps, each one rename (atomic on POSIX):
# 1. DIR -> .DIR.old-<pid>  (when DIR exists)
# 2. new_dir -> DIR
# 3. .DIR.old-<pid> removed.
# A kill between 1 and 2 leaves no DIR but a whole old bundle beside it: `recover_folder(DIR)`, which `moskd
# export` calls first, renames the newest leftover back. A kill after 2 leaves a stray old folder, which
# recover removes (DIR is whole). A half-written new bundle is a `.DIR.*.tmp` folder export owns and
# removes; it never has DIR's name.


def _olds(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)


def recover_folder(out: str | Path) -> str | None:
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


def swap_folder(new: str | Path, out: str | Path) -> None:
    """Swap a finished folder `new` (beside `out`, same filesystem) in as `out`: at every moment `out`
    holds the old folder or the new one whole (see the steps above recover_folder)."""
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
