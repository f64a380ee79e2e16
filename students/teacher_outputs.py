"""Where a student's teacher outputs come from: the one place that decides (as torchdistill's
get_teacher_output does) between

  cached  (--teacher-cache K > 0): the teacher's outputs for K views of every `train` image,
          computed once into memory-mapped files (students.cache) that every student reads row by
          row; the loader gives each image one of its K views per epoch and appends that view's
          output to the batch;
  online  (--teacher-cache 0): the teacher runs on the student's exact augmented batch each step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from moskd.streaming import open_image
from moskd.atomic import atomic_write
from moskd.data import DataBundle
from moskd.engine import Objective
from moskd.views import apply_views, normalize
from moskd.precision import choose_precision
from moskd.runtime import Runtime, log, show_progress
from moskd.views import crop_view, render, uses_crops, view_generator
from students.cache import (cache_dir, cache_key, choose_views, finish_cache, read_cache, require, start_cache,
                            to_rows, view_dtype)
from students.losses import cached_objective, online_objective


@dataclass
class TeacherOutputs:
    mode: str  # cached | online
    objective: Objective
    views: tuple | None = None  # cached: (view records, outputs) for the train loader (make_loader views=)
    cache: Path | None = None


def teacher_outputs(cfg, teacher: nn.Module, tpath: Path, data: DataBundle, rt: Runtime, cache_path: Path,
                    weighted: bool, preprocessing: dict | None = None) -> TeacherOutputs:
    """Cached or online teacher outputs for a StudentConfig `cfg` (the only place that chooses);
    preprocessing: the teacher's own input, part of the cache key."""
    if cfg.teacher_cache > 0:
        topk = cfg.teacher_topk
        folder = cache_dir(cache_path, topk)
        key = cache_key(tpath, data, cfg.teacher_cache, cfg.cache_seed, topk, preprocessing)
        views = load_or_build(folder, key, teacher, data, batch_size=cfg.eval_batch_size, rt=rt, amp=cfg.amp,
                              workers=data.workers)
        objective = cached_objective(cfg.alpha, cfg.temperature, cfg.kd_loss, cfg.label_smoothing, weighted=weighted)
        return TeacherOutputs("cached", objective, views, folder)
    objective = online_objective(teacher, cfg.alpha, cfg.temperature, cfg.kd_loss, cfg.label_smoothing,
                                 weighted=weighted)
    return TeacherOutputs("online", objective)


def crops_of(data: DataBundle) -> bool:
    return data.backend == "stream" and uses_crops(data.image_size)


def load_or_build(folder: Path, key: dict, teacher: nn.Module, data: DataBundle, *, batch_size: int, rt: Runtime,
                  amp: bool = True, workers: int = 0) -> tuple:
    """(views, outputs) students.cache.CachedRows matching key; computed and written when stale.
    Rank 0 builds; the other ranks wait at the barrier and then read what it wrote."""
    crops = crops_of(data)
    cached, why = read_cache(folder, key, data.num_classes, crops)
    if cached is not None:
        n, k = cached[0].shape[:2]
        log(rt, f"teacher cache {folder}: reused ({k} views x {n} images)")
    elif rt.is_main:
        n = len(data.splits["train"])
        log(rt, f"teacher cache {folder}: {why}; computing teacher outputs for up to {key['k']} views x {n} "
                f"train images")
        t0 = time.perf_counter()
        start_cache(folder)
        pairs, k = view_batches(data, key["k"], key["seed"], batch_size, workers)
        write_outputs(folder, pairs, n * k, teacher, data, key["topk"], rt, amp)
        finish_cache(folder, key, n, k)
        log(rt, f"teacher cache: {n * k} teacher forward passes in {time.perf_counter() - t0:.1f}s, paid once "
                f"for every student reading it")
    rt.barrier()
    if cached is None:
        cached, why = read_cache(folder, key, data.num_classes, crops)
    return require(cached, why, folder)


def view_batches(data: DataBundle, k: int, seed: int, batch_size: int, workers: int):
    """(batches of (view records (B, F), uint8 images (B, C, H, W) of those views, decodable (B,) bool)
    in (image, view) order, K') for every train image."""
    train = data.splits["train"]
    crops = crops_of(data)
    shifts = None if crops else choose_views(len(train), k, data.aug, seed)
    k = k if crops else shifts.shape[1]
    if data.backend == "memory":
        flat = shifts.reshape(-1, 3)

        def memory():
            for start in range(0, len(flat), batch_size):
                j = torch.arange(start, min(start + batch_size, len(flat)))
                yield flat[j].numpy(), apply_views(train.images[j // k], flat[j], data.aug.pad), torch.ones(
                    len(j), dtype=torch.bool)
        return memory(), k
    ds = ImageViews(train, data.image_size, k, seed, shifts)
    loader = DataLoader(ds, batch_size=max(1, batch_size // k), num_workers=workers, collate_fn=_stack_views)

    def stream():
        for records, x, ok in loader:
            yield records, (x if crops else apply_views(x, torch.from_numpy(records), data.aug.pad)), ok
    return stream(), k


class ImageViews(Dataset):
    """Image i -> its K views: crop records drawn from (seed, view number, i) and rendered, or the shift
    records given (applied per batch); a file that cannot be decoded gives zeros, marked not ok."""

    def __init__(self, files, size: int, k: int, seed: int, shifts):
        self.files, self.size, self.k, self.seed, self.shifts = files, size, k, seed, shifts

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):

        im, _ = open_image(self.files.paths[i].decode())
        if self.shifts is not None:
            records = self.shifts[i].numpy()
            x = None if im is None else np.asarray(im.resize((self.size, self.size), Image.BILINEAR))[None]
            x = None if x is None else np.repeat(x, self.k, 0)
        else:
            records = np.array([crop_view(im.height, im.width, view_generator(self.seed, v, i)) if im is not None
                                else (0, 0, 0, 0, 0) for v in range(self.k)], np.int32)
            x = None if im is None else np.stack([np.asarray(render(im, tuple(r), self.size)) for r in records])
        ok = np.full(self.k, im is not None)
        if x is None:
            x = np.zeros((self.k, self.size, self.size, 3), np.uint8)
        return records, x.transpose(0, 3, 1, 2), ok


def _stack_views(items):
    records = np.concatenate([it[0] for it in items])
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate([it[1] for it in items])))
    return records, x, torch.from_numpy(np.concatenate([it[2] for it in items]))


@torch.inference_mode()
def write_outputs(folder: Path, pairs, total: int, teacher: nn.Module, data: DataBundle, topk: int, rt: Runtime,
                  amp: bool) -> None:
    """views.bin and outputs.bin written in one sequential pass (atomically, each), batch by batch."""
    device = rt.device
    mean, std = (torch.tensor(v, device=device) for v in (data.mean, data.std))
    prec = choose_precision(device, amp, training=True)  # the cache is training input: the training policy's speed
    prec.model(teacher.eval())
    vd = view_dtype(crops_of(data))
    bar = tqdm(total=total, desc="teacher cache", unit="view", leave=False, disable=not show_progress(rt))

    def fill(fv, fo):
        for records, x, ok in pairs:
            logits = torch.zeros(len(ok), data.num_classes)
            if ok.any():
                xin = prec.input(normalize(x[ok].to(device), mean, std))
                with prec.autocast():
                    logits[ok] = teacher(xin).float().cpu()  # rounded to fp16 by to_rows
            fv.write(np.ascontiguousarray(records).astype(vd.base).tobytes())
            fo.write(to_rows(logits, topk).tobytes())
            bar.update(len(ok))

    atomic_write(folder / "views.bin", lambda fv: atomic_write(folder / "outputs.bin", lambda fo: fill(fv, fo)))
    bar.close()
