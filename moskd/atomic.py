"""Atomic file writes: a reader, or a kill mid-write, sees the old file whole or the new one whole.

summary.json marks a finished stage and report.json a finished evaluation, so neither may ever be
half-written; moskd.run re-exports these for the code that writes run files. Also a file's sha256,
the identity that the teacher cache, the class partition and seeds.json key a checkpoint on.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from moskd.errors import MoskdError


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename over `path`: a reader (or a kill)
    sees the old file whole or the new one whole, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON, indented, newline-terminated, written atomically (summary.json marks a finished stage)."""
    return write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Arrays as a compressed .npz, written atomically (numpy writes to memory first, then write_bytes)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())


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
