"""The shared teacher-logit cache: the teacher's forward pass, paid once for every student.

For each `train` image the cache holds K augmented views (their parameters, int16 (N, K, 3):
shift x, shift y, flip) and the teacher's logits for each (fp16 (N, K, C)). Each epoch the loader
gives every image one of its K views and appends that view's logits to the batch, so a student
trains on augmented images with no teacher in the loop.

The file RUN/teacher/cache/views-k{K}.pt (moskd.run.RunDir.teacher_cache) is keyed to what its
logits depend on: the sha256 of the teacher checkpoint file, DataBundle.fingerprint() (training
images, targets, augmentation), K, the view seed and the teacher's preprocessing. Any mismatch
rebuilds it and says why in one line; a stale cache is never reused. Both students and every run of a sweep read the same file.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from moskd.atomic import file_sha256
from moskd.checkpoint import read_checkpoint_file, save_checkpoint
from moskd.data import DataBundle
from moskd.loader import AugSpec
from moskd.loader import apply_views, normalize, sample_views
from moskd.errors import MoskdError
from moskd.precision import policy
from moskd.runtime import Runtime, log, show_progress

CACHE_FORMAT = 1  # bump when the file layout changes: old files then rebuild


def cache_key(teacher_path: str | Path, data: DataBundle, k: int, seed: int,
              preprocessing: dict | None = None) -> dict:
    """preprocessing: the teacher's own input (input_size, mean, std, interpolation; moskd.teacher_input
    converts the batch to it), so logits of one teacher fed differently never pass for each other."""
    return {"format": CACHE_FORMAT, "teacher_sha256": file_sha256(teacher_path), "data": data.fingerprint(),
            "k": int(k), "seed": int(seed), "teacher_preprocessing": preprocessing}


def distinct_views(aug: AugSpec) -> torch.Tensor:
    """Every view the augmentation can produce, (V, 3) int16: (2*pad+1)^2 shifts times 1 or 2 flips."""
    shifts = range(-aug.pad, aug.pad + 1)
    flips = (0, 1) if aug.flip else (0,)
    return torch.tensor(list(itertools.product(shifts, shifts, flips)), dtype=torch.int16)


def choose_views(n: int, k: int, aug: AugSpec, seed: int) -> torch.Tensor:
    """(n, K', 3) int16 view parameters per image.

    When K reaches the number of distinct views (digits: pad 1, no flip -> 9) all of them are
    enumerated once instead of sampled: K random draws would repeat some views and miss others,
    while the full set is exactly the augmentation distribution. Then K' = the number of distinct
    views (possibly fewer than K); otherwise K' = K views drawn as moskd.data.sample_views draws them.
    """
    every = distinct_views(aug)
    if k >= len(every):
        return every.expand(n, -1, -1).clone()
    g = torch.Generator().manual_seed(seed)
    return sample_views(n * k, aug, g).view(n, k, 3)


@torch.inference_mode()
def teacher_logits(teacher: nn.Module, data: DataBundle, views: torch.Tensor, batch_size: int,
                   device: torch.device, rt: Runtime, amp: bool = True) -> torch.Tensor:
    """fp16 (N, K, C) teacher logits of every (image, view) pair, in batches of flattened pairs."""
    images = data.splits["train"].images
    n, k, _ = views.shape
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)
    prec = policy(device, amp, training=True)  # the cache is training input: the training policy's speed
    prec.model(teacher.eval())
    out = torch.empty(n * k, data.num_classes, dtype=torch.float16)
    flat_views = views.reshape(n * k, 3)
    bar = tqdm(range(0, n * k, batch_size), desc="teacher cache", unit="batch", leave=False,
               disable=not show_progress(rt))
    for start in bar:
        j = torch.arange(start, min(start + batch_size, n * k))
        x = apply_views(images[j // k].to(device), flat_views[j], data.aug.pad)
        x = prec.input(normalize(x, mean, std))
        with prec.autocast():
            out[j] = teacher(x).float().to("cpu", torch.float16)
    return out.view(n, k, data.num_classes)


def _stale_reason(stored: dict, key: dict) -> str | None:
    names = {"format": "cache format", "teacher_sha256": "teacher checkpoint", "data": "training data",
             "k": "K (--teacher-cache)", "seed": "view seed (--cache-seed)",
             "teacher_preprocessing": "teacher preprocessing"}
    changed = [names.get(f, f) for f in key if stored.get(f) != key[f]]
    return f"{', '.join(changed)} changed" if changed else None


def _read(path: Path, key: dict) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """The cached (views, logits) when the file matches key, else None and why not."""
    if not path.is_file():
        return None, "none yet"
    try:
        obj = read_checkpoint_file(path)
    except MoskdError:
        return None, "unreadable file"
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), dict):
        return None, "not a cache file"
    reason = _stale_reason(obj["key"], key)
    if reason:
        return None, reason
    return (obj["views"], obj["logits"]), ""


def load_or_build(path: Path, key: dict, teacher: nn.Module, data: DataBundle, *, batch_size: int,
                  rt: Runtime, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached (views int16 (N,K,3), logits fp16 (N,K,C)) matching key; computed and saved when stale.

    Rank 0 builds; the other ranks wait at the barrier and then read the file it wrote.
    """
    cached, why = _read(path, key)
    if cached is not None:
        log(rt, f"teacher cache {path}: reused ({cached[0].shape[1]} views x {cached[0].shape[0]} images)")
    elif rt.is_main:
        views = choose_views(len(data.splits["train"]), key["k"], data.aug, key["seed"])
        log(rt, f"teacher cache {path}: {why}; computing teacher logits for {views.shape[1]} views "
                f"x {views.shape[0]} train images")
        t0 = time.perf_counter()
        logits = teacher_logits(teacher, data, views, batch_size, rt.device, rt, amp)
        save_checkpoint({"key": key, "views": views, "logits": logits}, path)
        log(rt, f"teacher cache: {views.shape[0] * views.shape[1]} teacher forward passes in "
                f"{time.perf_counter() - t0:.1f}s, paid once for every student reading it")
        cached = (views, logits)
    rt.barrier()
    if cached is None:  # a non-zero rank: rank 0 has written it by now
        cached, why = _read(path, key)
        if cached is None:
            raise MoskdError(f"teacher cache {path}: {why} after rank 0 built it; check the file system")
    return cached
