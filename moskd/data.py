"""The data of a run: a dataset (moskd.datasets) split deterministically into train/select/test and
held as a DataBundle; the loader and augmentation come from moskd.loader. Callers import all of
it from here.

Every dataset is held in memory as uint8 tensors (N, C, H, W): small-image classification fits,
and it lets augmentation run as one batched op on the training device. Augmentation is
parametric (a view = horizontal shift, vertical shift, flip) so that the teacher-logit cache can
store exactly which view each cached logit belongs to.

Splits:
  train   teacher and students learn here
  select  held out of the training set: picks checkpoints, labels and trains the selector
  test    final reporting only; nothing is chosen on it
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from moskd.datasets import decode_folder, folder_aug, folder_size, list_folder, read_source, resize_images
from moskd.errors import MoskdError, warn
from moskd.streaming import FileSet, file_fingerprint, sample_stats
from moskd.atomic import atomic_write
from moskd.views import AugSpec, uses_crops

SPLITS = ("train", "select", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    targets: torch.Tensor  # (N,) int64 class indices
    index: torch.Tensor  # (N,) position in the source pool (digits: all images; CIFAR: its train or test file)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class DataBundle:
    name: str
    class_names: list[str]
    splits: dict[str, ImageSet]
    aug: AugSpec
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    backend: str = "memory"  # memory (uint8 tensors) | stream (files, moskd.streaming): see choose_backend
    image_size: int | None = None  # stream: the side of every view (px)
    workers: int = 0  # stream: DataLoader worker processes decoding files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> list[int]:
        if self.backend == "stream":
            return [3, self.image_size, self.image_size]
        return list(self.splits["train"].images.shape[1:])

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def card(self) -> dict:
        """The dataset part of a model card."""
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "in_chans": self.in_chans,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "data_backend": self.backend,
        }

    def fingerprint(self) -> str:
        """Hash of the training images, targets and augmentation: keys caches to the data."""
        h = hashlib.sha256()
        tr = self.splits["train"]
        h.update(self.name.encode())
        h.update(repr(self.aug).encode())
        if self.backend == "stream":  # paths, sizes and modification times: reading 1M files would take long

            h.update(repr(self.input_size).encode())
            h.update(file_fingerprint(tr.paths))
        else:
            h.update(tr.images.numpy().tobytes())
        h.update(tr.targets.numpy().tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------- split


def _stratified(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(y))
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 and fraction * len(y) >= len(counts) else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return keep, held


def load_data(
    dataset: str = "digits",
    data_dir: str = "data",
    download: bool = False,
    split_seed: int = 0,
    select_fraction: float = 0.2,
    test_fraction: float = 0.2,
    limit: int | None = None,
    image_size: int | None = None,
    train_limit: int | None = None,
    max_ram: float | None = None,
    workers: int = 0,
    decoded_dir: str | Path | None = None,
) -> DataBundle:
    """Load a dataset and split it deterministically into train / select / test.

    select_fraction: share of the training set held out as `select`.
    test_fraction: share held out as `test` when the dataset has no official test split.
    limit: keep at most this many images per split (small slices for tests and smoke runs).
    image_size: resize every image to image_size x image_size (None: the dataset's own size; a
        folder's is probed from a sample of its files).
    train_limit: keep at most this many `train` images (select and test untouched): cheaper training
        with the full evaluation splits. The images left over form the split `spare`, which no student
        trains on (trainSelector --labels-from select+spare labels them).
    max_ram: memory budget in GiB for a folder's decoded images (None: a quarter of this machine's
        memory); a folder over it, or at 64 px and above, is streamed (choose_backend).
    workers: DataLoader worker processes decoding a streamed folder.
    decoded_dir: where a folder held in memory keeps its decoded images (uint8 .npy, keyed by its
        files and the size), so the stages of one run decode it once (data_from_config: RUN/data).
    """
    _check_settings(select_fraction, test_fraction, image_size)
    if dataset.startswith("folder:"):
        listing = list_folder(dataset[len("folder:"):])
        if image_size is None:
            image_size, how = folder_size(listing)
            warn(f"{dataset}: training at {image_size}x{image_size} px ({how}); pass --image-size N to choose")
        if choose_backend(listing, image_size, max_ram) == "stream":
            return _stream_bundle(dataset, listing, image_size, workers, split_seed, select_fraction,
                                  test_fraction, limit, train_limit)
        x, y, xt, yt, classes, aug = decode_once(listing, image_size, decoded_dir)
    else:
        x, y, xt, yt, classes, aug = read_source(dataset, data_dir, download, image_size)
    if image_size is not None and x.shape[-1] != image_size:
        native = x.shape[-1]
        x = resize_images(x, image_size)
        xt = resize_images(xt, image_size) if xt is not None else None
        aug = AugSpec(pad=max(1, round(aug.pad * image_size / native)) if aug.pad else 0, flip=aug.flip)
    parts = _split_parts(y, len(yt) if yt is not None else None, split_seed, select_fraction, test_fraction,
                         train_limit)
    arrays = {k: (x[i] if k != "test" or xt is None else xt, y[i] if k != "test" or yt is None else yt, i)
              for k, i in parts.items()}
    splits = {
        k: ImageSet(*(torch.from_numpy(np.ascontiguousarray(a[:limit])) for a in arrays))
        for k, arrays in arrays.items()
    }
    _warn_small_splits(dataset, splits, len(classes))
    train = splits["train"].images.float().div_(255)
    mean = train.mean(dim=(0, 2, 3)).tolist()
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return DataBundle(dataset, classes, splits, aug, mean, std)


def _check_settings(select_fraction: float, test_fraction: float, image_size: int | None) -> None:
    if not 0 < select_fraction < 1 or not 0 < test_fraction < 1:
        raise MoskdError("--select-fraction and --test-fraction must lie strictly between 0 and 1")
    if image_size is not None and image_size < 1:
        raise MoskdError(f"--image-size {image_size}: must be >= 1")


def _split_parts(y: np.ndarray, n_test: int | None, split_seed: int, select_fraction: float,
                 test_fraction: float, train_limit: int | None) -> dict[str, np.ndarray]:
    """Indices of each split: into the pool (train, select, spare) and the official test set when
    there is one (n_test), else into the pool."""
    pool = np.arange(len(y))
    if n_test is None:  # no official test split: hold one out of the same pool
        pool, test_idx = _stratified(y, test_fraction, split_seed)
    else:
        test_idx = np.arange(n_test)
    tr, sel = _stratified(y[pool], select_fraction, split_seed + 1)
    tr, sel = pool[tr], pool[sel]
    # train_test_split shuffles, so a prefix is a random (near-stratified) subset; the rest of the
    # pool (`spare`) is trained on by no student: unseen images the selector may learn from
    spare = tr[train_limit:] if train_limit is not None else tr[:0]
    parts = {"train": tr[:train_limit], "select": sel, "test": test_idx}
    if len(spare):
        parts["spare"] = spare
    return parts


def _warn_small_splits(dataset: str, splits: dict, num_classes: int) -> None:
    for k, split in splits.items():
        if len(split) < num_classes and k != "spare":  # legal, but its accuracy cannot speak for every class
            warn(f"{dataset}: split '{k}' holds {len(split)} image(s) for {num_classes} classes, so some "
                 f"classes cannot appear in it; add images or raise --limit")


def decode_once(listing, image_size: int, decoded_dir: str | Path | None):
    """decode_folder, reading the decoded arrays from decoded_dir when an earlier stage of the run
    wrote them for the same files (paths, sizes, modification times) and size; else writing them."""
    if decoded_dir is None:
        return decode_folder(listing, image_size)

    (paths, y), test, classes = listing
    h = hashlib.sha256(file_fingerprint(paths) + repr(image_size).encode())
    if test is not None:
        h.update(file_fingerprint(test[0]))
    files = [Path(decoded_dir) / f"folder-{h.hexdigest()[:16]}-{part}.npy" for part in ("train", "test")]
    if all(f.is_file() for f in files[: 1 + (test is not None)]):
        x = np.load(files[0], mmap_mode="r")
        xt = np.load(files[1], mmap_mode="r") if test is not None else None
        return x, y, xt, (test[1] if test is not None else None), classes, folder_aug(image_size)
    x, y, xt, yt, classes, aug = decode_folder(listing, image_size)
    for f, a in zip(files, (x, xt)):
        if a is not None:
            atomic_write(f, lambda out, a=a: np.save(out, a))
    return x, y, xt, yt, classes, aug


def default_max_ram() -> float:
    """GiB: a quarter of this machine's physical memory."""

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30


def choose_backend(listing, image_size: int, max_ram: float | None) -> str:
    """The one place that chooses how a folder is held: `memory` (decoded once into uint8 tensors)
    when its decoded size fits max_ram GiB and its views are shift + flip (below 64 px); `stream`
    (files decoded per batch in workers) otherwise: crop views are cut from the file itself."""
    n = len(listing[0][1]) + (len(listing[1][1]) if listing[1] is not None else 0)
    decoded = n * 3 * image_size * image_size  # bytes of uint8 (3, size, size) images
    budget = (default_max_ram() if max_ram is None else max_ram) * 2**30
    return "stream" if uses_crops(image_size) or decoded > budget else "memory"


def _stream_bundle(dataset, listing, image_size, workers, split_seed, select_fraction, test_fraction, limit,
                   train_limit) -> DataBundle:

    (paths, y), test, classes = listing
    parts = _split_parts(y, len(test[1]) if test is not None else None, split_seed, select_fraction,
                         test_fraction, train_limit)
    pool = FileSet(paths, torch.from_numpy(y), torch.arange(len(y)))
    tests = FileSet(test[0], torch.from_numpy(test[1]), torch.arange(len(test[1]))) if test is not None else pool
    splits = {k: (tests if k == "test" else pool).subset(i[:limit]) for k, i in parts.items()}
    _warn_small_splits(dataset, splits, len(classes))
    mean, std = sample_stats(splits["train"], image_size, split_seed)
    return DataBundle(dataset, classes, splits, folder_aug(image_size), mean, std, backend="stream",
                      image_size=image_size, workers=workers)


def data_from_config(cfg) -> DataBundle:
    """load_data with the data settings of a stage config (moskd.engine.DataConfig)."""
    return load_data(cfg.dataset, cfg.data_dir, cfg.download, cfg.split_seed, cfg.select_fraction,
                     cfg.test_fraction, cfg.limit, cfg.image_size, cfg.train_limit,
                     getattr(cfg, "max_ram", None), getattr(cfg, "workers", 0), Path(cfg.run_dir) / "data")
