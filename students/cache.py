"""The shared teacher-output cache: the teacher's forward pass, paid once for every student.

For each `train` image the cache holds K views (their records: shift x, shift y, flip below 64 px;
crop top, left, height, width, flip at 64 px and above, moskd.views) and the teacher's output for
each: its fp16 logits (C values), or with --teacher-topk T its T largest probabilities (fp16) and
their class indices (int16), from which moskd-side code rebuilds a distribution (topk_logits).
Both are memory-mapped files indexed by (image, view), written in one sequential pass and read row
by row: no student holds the cache in memory.

Bytes per image per view (bytes_per_view): 2C for logits (+ 6 for a shift record, 20 for a crop
record): 10 classes 20 B, 1,000 classes 2,000 B; --teacher-topk T: 4T (T = 5: 20 B).

The folder RUN/teacher/cache/views-k{K}[-top{T}]/ (next to moskd.run.RunDir.teacher_cache's name)
holds views.bin, outputs.bin and key.json, written last: the sha256 of the teacher checkpoint file,
the data's preprocessing (mean, std, input size) and the teacher's own,
DataBundle.fingerprint() (training data and
augmentation), K, T and the view seed. Any mismatch rebuilds it and says why in one line.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch

from moskd.atomic import file_sha256, write_json
from moskd.data import DataBundle
from moskd.errors import MoskdError
from moskd.views import AugSpec, sample_views

CACHE_FORMAT = 2  # 2: memory-mapped views.bin/outputs.bin (1 was one .pt file)


def cache_key(teacher_path: str | Path, data: DataBundle, k: int, seed: int, topk: int = 0,
              teacher_preprocessing: dict | None = None) -> dict:
    """teacher_preprocessing: the teacher's own input (input_size, mean, std, interpolation;
    moskd.teacher_input converts the batch to it), so outputs of one teacher fed differently never
    pass for each other."""
    return {"format": CACHE_FORMAT, "teacher_sha256": file_sha256(teacher_path), "data": data.fingerprint(),
            "preprocessing": {"mean": list(data.mean), "std": list(data.std), "input_size": data.input_size},
            "teacher_preprocessing": teacher_preprocessing, "k": int(k), "topk": int(topk), "seed": int(seed)}


def cache_dir(path: Path, topk: int = 0) -> Path:
    """The cache folder beside RunDir.teacher_cache(K)'s name: views-k{K}/ or views-k{K}-top{T}/."""
    path = Path(path)
    return path.with_name(path.stem + (f"-top{topk}" if topk else ""))


def output_dtype(num_classes: int, topk: int) -> np.dtype:
    """One (image, view) row of outputs.bin: C fp16 logits, or T fp16 probabilities + T class indices."""
    if not topk:
        return np.dtype(("<f2", (num_classes,)))
    index = "<i2" if num_classes <= 2**15 else "<i4"
    return np.dtype([("p", "<f2", (topk,)), ("c", index, (topk,))])


def view_dtype(crops: bool) -> np.dtype:
    return np.dtype(("<i4", (5,))) if crops else np.dtype(("<i2", (3,)))


def bytes_per_view(num_classes: int, topk: int = 0, crops: bool = False) -> int:
    """Disk bytes of one (image, view) pair: its output row and its view record."""
    return output_dtype(num_classes, topk).itemsize + view_dtype(crops).itemsize


def distinct_views(aug: AugSpec) -> torch.Tensor:
    """Every view the augmentation can produce, (V, 3) int16: (2*pad+1)^2 shifts times 1 or 2 flips."""
    shifts = range(-aug.pad, aug.pad + 1)
    flips = (0, 1) if aug.flip else (0,)
    return torch.tensor(list(itertools.product(shifts, shifts, flips)), dtype=torch.int16)


def choose_views(n: int, k: int, aug: AugSpec, seed: int) -> torch.Tensor:
    """(n, K', 3) int16 shift views per image.

    When K reaches the number of distinct views (digits: pad 1, no flip -> 9) all of them are
    enumerated once instead of sampled: K random draws would repeat some views and miss others,
    while the full set is exactly the augmentation distribution. Then K' = the number of distinct
    views (possibly fewer than K); otherwise K' = K views drawn as moskd.loader.sample_views draws them.
    """
    every = distinct_views(aug)
    if k >= len(every):
        return every.expand(n, -1, -1).clone()
    g = torch.Generator().manual_seed(seed)
    return sample_views(n * k, aug, g).view(n, k, 3)


def to_rows(logits: torch.Tensor, topk: int) -> np.ndarray:
    """fp32 teacher logits (B, C) -> rows of output_dtype: fp16 logits, or top-T probabilities and classes."""
    if not topk:
        return logits.to(torch.float16).numpy()
    p, c = logits.float().softmax(1).topk(topk, dim=1)
    rows = np.empty(len(logits), output_dtype(logits.shape[1], topk))
    rows["p"], rows["c"] = p.to(torch.float16).numpy(), c.numpy()
    return rows


def topk_logits(rows: np.ndarray, num_classes: int) -> torch.Tensor:
    """fp32 (B, C) logits whose softmax puts each stored top-T probability on its class and spreads the
    rest of the mass evenly over the other classes (FKD's label recovery); softmax(x / T) tempers it."""
    p = torch.from_numpy(rows["p"].astype(np.float32))
    c = torch.from_numpy(rows["c"].astype(np.int64))
    others = num_classes - p.shape[1]
    rest = (1.0 - p.sum(1, keepdim=True)).clamp_min(1e-6) / max(others, 1)
    out = rest.log().expand(-1, num_classes).clone()
    return out.scatter_(1, c, p.clamp_min(1e-8).log())


class CachedRows:
    """A memory-mapped (N, K) array read by (image indices, view indices) tensors; rows come back as
    torch tensors (fp16 logits; top-T rows rebuilt to fp32 logits; view records as stored)."""

    def __init__(self, path: Path, dtype: np.dtype, n: int, k: int, num_classes: int = 0):
        self.array = np.memmap(path, dtype=dtype, mode="r", shape=(n, k))
        self.num_classes, self.shape = num_classes, (n, k, *dtype.shape)

    def __getitem__(self, ik) -> torch.Tensor:
        i, k = (np.asarray(t) for t in ik)
        rows = self.array[i, k]
        if rows.dtype.names:
            return topk_logits(rows, self.num_classes)
        return torch.from_numpy(np.ascontiguousarray(rows))


def read_cache(folder: Path, key: dict, num_classes: int, crops: bool) -> tuple[tuple | None, str]:
    """(views, outputs) CachedRows when the folder's key.json matches key, else None and why not."""
    try:
        stored = json.loads((folder / "key.json").read_text())
    except FileNotFoundError:
        return None, "none yet"
    except (OSError, ValueError):
        return None, "unreadable key.json"
    names = {"format": "cache format", "teacher_sha256": "teacher checkpoint", "data": "training data",
             "preprocessing": "data preprocessing", "teacher_preprocessing": "teacher preprocessing",
             "k": "K (--teacher-cache)", "topk": "--teacher-topk",
             "seed": "view seed (--cache-seed)"}
    changed = [names.get(f, f) for f in key if stored.get(f) != key[f]]
    if changed:
        return None, f"{', '.join(changed)} changed"
    n, k = stored["shape"]
    vd, od = view_dtype(crops), output_dtype(num_classes, key["topk"])
    sizes = {"views.bin": n * k * vd.itemsize, "outputs.bin": n * k * od.itemsize}
    if any(not (folder / f).is_file() or (folder / f).stat().st_size != s for f, s in sizes.items()):
        return None, "files of the wrong size"
    return (CachedRows(folder / "views.bin", vd, n, k), CachedRows(folder / "outputs.bin", od, n, k, num_classes)), ""


def finish_cache(folder: Path, key: dict, n: int, k: int) -> None:
    """key.json last: a cache whose key is on disk is whole."""
    write_json(folder / "key.json", {**key, "shape": [n, k]})


def start_cache(folder: Path) -> None:
    """Drop the key first, so a rebuild killed half-way is never taken for the old cache."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").unlink(missing_ok=True)


def require(cached, why: str, folder: Path):
    if cached is None:
        raise MoskdError(f"teacher cache {folder}: {why} after rank 0 built it; check the file system")
    return cached
