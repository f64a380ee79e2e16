"""Datasets, the deterministic train/select/test split, parametric augmentation, and the loader.

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

import gzip
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from moskd.errors import MoskdError

SPLITS = ("train", "select", "test")
DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "folder:PATH")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # as published by Zalando Research, in label order
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts them


@dataclass(frozen=True)
class AugSpec:
    pad: int = 0  # max shift in pixels each way (random crop from a zero-padded image)
    flip: bool = False  # random horizontal flip


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


# ---------------------------------------------------------------- dataset sources


def _digits() -> tuple[np.ndarray, np.ndarray, None, None, list[str], AugSpec]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 ink -> 0..255, (N,1,8,8)
    return x, d.target.astype(np.int64), None, None, [str(c) for c in d.target_names], AugSpec(pad=1, flip=False)


def _cifar(name: str, data_dir: str, download: bool):
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100

    class LocalFiles(base):  # type: ignore[misc, valid-type]
        # torchvision md5-checks the official archives; accept any file-compatible copy
        # (a re-pickled subset, a test fixture) once the download itself was verified.
        meta = {**base.meta, "md5": None}  # md5 None: check the file exists

        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(folder, f)) for f, _ in self.train_list + self.test_list)

    if download:
        base(data_dir, train=True, download=True)
    try:
        tr = LocalFiles(data_dir, train=True)
        te = LocalFiles(data_dir, train=False)
    except RuntimeError:
        folder = os.path.join(data_dir, base.base_folder)
        raise MoskdError(
            f"{name} not found in {folder}; rerun with --download (needs network) or unpack "
            f"{base.filename} into {data_dir}"
        ) from None
    to_chw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    return (
        to_chw(tr.data), np.asarray(tr.targets, np.int64), to_chw(te.data), np.asarray(te.targets, np.int64),
        list(tr.classes), AugSpec(pad=4, flip=True),
    )


def _folder(path: str, image_size: int):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    root = Path(path)
    if not root.is_dir():
        raise MoskdError(f"image folder {path} not found; pass folder:PATH with one sub-folder per class")

    def load(folder: Path):
        try:
            ds = ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as e:
            raise MoskdError(f"{folder}: {e}; expected one sub-folder of images per class") from None
        xs = []
        for p, _ in ds.samples:
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    xs.append(np.asarray(im).transpose(2, 0, 1))
            except OSError as e:
                raise MoskdError(f"{p}: unreadable image ({e}); remove or replace it") from None
        return np.stack(xs), np.asarray(ds.targets, np.int64), ds.classes

    aug = AugSpec(pad=max(1, image_size // 8), flip=True)
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = load(root / "train")
        xt, yt, classes_t = load(root / "test")
        if classes_t != classes:
            raise MoskdError(f"{root}/train and {root}/test hold different class folders; make them match")
        return x, y, xt, yt, classes, aug
    x, y, classes = load(root)
    return x, y, None, None, classes, aug


def _fashion_files(data_dir: str) -> list[Path]:
    """The four official files (gzipped or not) from one folder: data_dir (flat, Debian's layout),
    data_dir/FashionMNIST/raw (torchvision's), or the Debian package's folder when data_dir has neither."""
    def find(folder: Path, name: str) -> Path | None:
        return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)

    for folder in (Path(data_dir), Path(data_dir) / "FashionMNIST" / "raw", Path(DEBIAN_FASHION_DIR)):
        found = [find(folder, name) for name in FASHION_FILES]
        if all(found):
            return found  # type: ignore[return-value]
    missing = next(n for n in FASHION_FILES if not (find(Path(data_dir), n) or find(Path(data_dir) / "FashionMNIST" / "raw", n)))
    raise MoskdError(
        f"fashion-mnist: {missing}.gz not found in {data_dir} (flat) or {data_dir}/FashionMNIST/raw; install "
        f"Debian's package (apt-get install dataset-fashion-mnist, files in {DEBIAN_FASHION_DIR}) or rerun "
        f"with --download (needs network)"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims, uint8 data), gzipped or raw; one line if corrupt."""
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except (OSError, EOFError) as e:
        raise MoskdError(f"{path}: corrupt or truncated ({e}); download the file again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise MoskdError(f"{path}: not an IDX uint8 file (bad magic number); download the file again")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(bytearray(raw), np.uint8, offset=4 + 4 * ndim)  # bytearray: a writable array
    if data.size != int(np.prod(dims)):
        raise MoskdError(f"{path}: holds {data.size} values, its header says {dims}; download the file again")
    return data.reshape(dims)


def _fashion_mnist(data_dir: str, download: bool):
    if download:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(data_dir, train=True, download=True)  # torchvision layout: data_dir/FashionMNIST/raw
    x, y, xt, yt = (read_idx(p) for p in _fashion_files(data_dir))
    if len(x) != len(y) or len(xt) != len(yt):
        raise MoskdError(f"fashion-mnist in {data_dir}: image and label files disagree in length; "
                         f"download the files again")
    return x[:, None], y.astype(np.int64), xt[:, None], yt.astype(np.int64), list(FASHION_CLASSES), AugSpec(2, True)


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) uint8 resized to size x size (bilinear, antialiased when shrinking); channels kept."""
    if x.shape[-2:] == (size, size):
        return x
    out = []
    for start in range(0, len(x), 4096):  # chunks: 60,000 float images at once would need GBs
        t = torch.from_numpy(np.ascontiguousarray(x[start:start + 4096])).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(t.round_().clamp_(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


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
        with the full evaluation splits.
    """
    if dataset == "digits":
        x, y, xt, yt, classes, aug = _digits()
    elif dataset == "fashion-mnist":
        x, y, xt, yt, classes, aug = _fashion_mnist(data_dir, download)
    elif dataset in ("cifar10", "cifar100"):
        x, y, xt, yt, classes, aug = _cifar(dataset, data_dir, download)
    elif dataset.startswith("folder:"):
        x, y, xt, yt, classes, aug = _folder(dataset[len("folder:"):], image_size or 32)
    else:
        raise MoskdError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
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
    tr = tr[:train_limit]  # train_test_split shuffles, so a prefix is a random (near-stratified) subset
    parts = {"train": (x[tr], y[tr], tr), "select": (x[sel], y[sel], sel), "test": (xt, yt, test_idx)}
    splits = {
        k: ImageSet(*(torch.from_numpy(np.ascontiguousarray(a[:limit])) for a in arrays))
        for k, arrays in parts.items()
    }
    train = splits["train"].images.float().div_(255)
    mean = train.mean(dim=(0, 2, 3)).tolist()
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return DataBundle(dataset, classes, splits, aug, mean, std)


# ---------------------------------------------------------------- augmentation


def sample_views(n: int, aug: AugSpec, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) int16 view parameters: shift x, shift y, flip."""
    shifts = torch.randint(-aug.pad, aug.pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator) if aug.flip else torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([shifts, flips], 1).to(torch.int16)


def apply_views(x: torch.Tensor, views: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift (zero fill) and optionally flip each image of a batch by its own view, in one gather."""
    b, _, h, w = x.shape
    views = views.to(x.device, torch.long)
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
    rows = torch.arange(h, device=x.device)[None] + (pad + views[:, 1:2])  # (B, H)
    cols = torch.arange(w, device=x.device)[None] + (pad + views[:, 0:1])  # (B, W)
    cols = torch.where(views[:, 2:3].bool(), cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return x[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()  # (B,H,W,C)->(B,C,H,W)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.float().div_(255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


# ---------------------------------------------------------------- loader


class TensorLoader:
    """Batches of an in-memory uint8 image set, augmented and normalised on `device`.

    Yields (images float (B,C,H,W), targets, *extras). Shuffling and augmentation draw from a
    generator seeded by (seed, epoch), so an epoch is reproducible on its own: a resumed run sees
    the same batches an uninterrupted one would. Under DDP each rank takes an equal shard
    (padded by wrapping, as DistributedSampler does) when training, and a disjoint unpadded shard
    when evaluating.

    views: optional (params (N,K,3), logits (N,K,C)) from the teacher cache; each epoch every image
    takes one of its K cached views, and the view's teacher logits come as the last extra.
    """

    def __init__(self, images, targets, *, mean, std, batch_size, device="cpu", train=False,
                 aug: AugSpec | None = None, extras=(), views=None, seed=0, rank=0, world=1):
        self.images, self.targets, self.extras = images, targets, tuple(extras)
        self.batch_size, self.device, self.train = batch_size, torch.device(device), train
        self.aug = aug if train else None
        if views is not None and self.aug is None:
            raise ValueError("cached views need the dataset's augmentation spec")
        self.views = views
        self.seed, self.rank, self.world = seed, rank, world
        self.mean = torch.tensor(mean, device=self.device)
        self.std = torch.tensor(std, device=self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self, g: torch.Generator) -> torch.Tensor:
        n = len(self.targets)
        if not self.train:
            return torch.arange(self.rank, n, self.world)
        order = torch.randperm(n, generator=g)
        per_rank = math.ceil(n / self.world)
        order = torch.cat([order, order[: per_rank * self.world - n]])
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        n = len(self.targets)
        per_rank = math.ceil(n / self.world) if self.train else len(range(self.rank, n, self.world))
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = self._indices(g)
        if self.views is not None and self.train:
            params, logits = self.views
            pick = torch.randint(0, params.shape[1], (len(self.targets),), generator=g)
        elif self.aug is not None:
            params = sample_views(len(self.targets), self.aug, g)  # one draw per image per epoch
        for start in range(0, len(idx), self.batch_size):
            i = idx[start : start + self.batch_size]
            x = self.images[i].to(self.device, non_blocking=True)
            extra = [e[i].to(self.device, non_blocking=True) for e in self.extras]
            if self.views is not None and self.train:
                k = pick[i]
                x = apply_views(x, params[i, k], self.aug.pad)
                extra.append(logits[i, k].to(self.device, torch.float32))
            elif self.aug is not None:
                x = apply_views(x, params[i], self.aug.pad)
            yield (normalize(x, self.mean, self.std), self.targets[i].to(self.device), *extra)


def make_loader(data: DataBundle, split: str, batch_size: int, *, device="cpu", train=False, seed=0,
                rank=0, world=1, extras=(), views=None) -> TensorLoader:
    s = data.splits[split]
    return TensorLoader(
        s.images, s.targets, mean=data.mean, std=data.std, batch_size=batch_size,
        device=device, train=train, aug=data.aug, extras=extras, views=views, seed=seed, rank=rank, world=world,
    )


def data_from_config(cfg) -> DataBundle:
    """load_data with the data settings of a stage config (moskd.engine.DataConfig)."""
    return load_data(cfg.dataset, cfg.data_dir, cfg.download, cfg.split_seed, cfg.select_fraction,
                     cfg.test_fraction, cfg.limit, cfg.image_size, cfg.train_limit)
