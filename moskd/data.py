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
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from moskd.datasets import read_source, resize_images
from moskd.errors import MoskdError, warn
from moskd.loader import AugSpec

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> list[int]:
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
        }

    def fingerprint(self) -> str:
        """Hash of the training images, targets and augmentation: keys caches to the data."""
        h = hashlib.sha256()
        tr = self.splits["train"]
        h.update(self.name.encode())
        h.update(repr(self.aug).encode())
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
) -> DataBundle:
    """Load a dataset and split it deterministically into train / select / test.

    select_fraction: share of the training set held out as `select`.
    test_fraction: share held out as `test` when the dataset has no official test split.
    limit: keep at most this many images per split (small slices for tests and smoke runs).
    image_size: resize every image to image_size x image_size (None: the dataset's own size; folder: 32).
    train_limit: keep at most this many `train` images (select and test untouched): cheaper training
        with the full evaluation splits. The images left over form the split `spare`, which no student
        trains on (trainSelector --labels-from select+spare labels them).
    """
    x, y, xt, yt, classes, aug = read_source(dataset, data_dir, download, image_size)
    if not 0 < select_fraction < 1 or not 0 < test_fraction < 1:
        raise MoskdError("--select-fraction and --test-fraction must lie strictly between 0 and 1")
    if image_size is not None and image_size < 1:
        raise MoskdError(f"--image-size {image_size}: must be >= 1")
    if image_size is not None and x.shape[-1] != image_size:
        native = x.shape[-1]
        x = resize_images(x, image_size)
        xt = resize_images(xt, image_size) if xt is not None else None
        aug = AugSpec(pad=max(1, round(aug.pad * image_size / native)) if aug.pad else 0, flip=aug.flip)
    pool = np.arange(len(y))
    if xt is None:  # no official test split: hold one out of the same pool
        pool, test_idx = _stratified(y, test_fraction, split_seed)
        xt, yt = x[test_idx], y[test_idx]
    else:
        test_idx = np.arange(len(yt))
    tr, sel = _stratified(y[pool], select_fraction, split_seed + 1)
    tr, sel = pool[tr], pool[sel]
    # train_test_split shuffles, so a prefix is a random (near-stratified) subset; the rest of the
    # pool (`spare`) is trained on by no student: unseen images the selector may learn from
    spare = tr[train_limit:] if train_limit is not None else tr[:0]
    tr = tr[:train_limit]
    parts = {"train": (x[tr], y[tr], tr), "select": (x[sel], y[sel], sel), "test": (xt, yt, test_idx)}
    if len(spare):
        parts["spare"] = (x[spare], y[spare], spare)
    splits = {
        k: ImageSet(*(torch.from_numpy(np.ascontiguousarray(a[:limit])) for a in arrays))
        for k, arrays in parts.items()
    }
    for k, split in splits.items():
        if len(split) < len(classes) and k != "spare":  # legal, but its accuracy cannot speak for every class
            warn(f"{dataset}: split '{k}' holds {len(split)} image(s) for {len(classes)} classes, so some "
                 f"classes cannot appear in it; add images or raise --limit")
    train = splits["train"].images.float().div_(255)
    mean = train.mean(dim=(0, 2, 3)).tolist()
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return DataBundle(dataset, classes, splits, aug, mean, std)


def data_from_config(cfg) -> DataBundle:
    """load_data with the data settings of a stage config (moskd.engine.DataConfig)."""
    return load_data(cfg.dataset, cfg.data_dir, cfg.download, cfg.split_seed, cfg.select_fraction,
                     cfg.test_fraction, cfg.limit, cfg.image_size, cfg.train_limit)
