"""Where the images come from: digits (bundled with scikit-learn), fashion-mnist's IDX files,
CIFAR through torchvision, or an image folder with one sub-folder per class. Each source returns
uint8 arrays (N, C, H, W), labels, the official test split if the dataset has one, class names and
its augmentation spec; moskd.data splits and holds them. A folder is checked as it is read: fewer
than two classes is refused, images outside the class folders are warned about.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from moskd.errors import MoskdError, warn
from moskd.streaming import probe_size
from moskd.views import AugSpec

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "folder:PATH")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # as published by Zalando Research, in label order
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts them


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


def list_folder(path: str) -> tuple[tuple, tuple | None, list[str]]:
    """((paths, targets) of train, the same of test or None, class names) of an image folder: one
    sub-folder per class, or train/ and test/ holding such sub-folders. Paths are a numpy bytes
    array (workers share it unchanged); nothing is decoded here."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(path)
    if not root.is_dir():
        raise MoskdError(f"image folder {path} not found; pass folder:PATH with one sub-folder per class")

    def scan(folder: Path):
        check_class_folders(folder, IMG_EXTENSIONS)
        try:
            ds = ImageFolder(str(folder), loader=lambda p: p)
        except (FileNotFoundError, RuntimeError) as e:
            raise MoskdError(f"{folder}: {' '.join(str(e).split())}; expected one sub-folder of images per "
                             f"class, none of them empty") from None
        paths = np.array([os.fsencode(p) for p, _ in ds.samples])
        return (paths, np.asarray(ds.targets, np.int64)), ds.classes

    if (root / "train").is_dir() and (root / "test").is_dir():
        train, classes = scan(root / "train")
        test, classes_t = scan(root / "test")
        if classes_t != classes:
            raise MoskdError(f"{root}/train and {root}/test hold different class folders; make them match")
        return train, test, classes
    train, classes = scan(root)
    return train, None, classes


def folder_aug(image_size: int) -> AugSpec:
    return AugSpec(pad=max(1, image_size // 8), flip=True)


def decode_folder(listing, image_size: int):
    """The in-memory source of a listed folder: every image decoded and squashed to image_size."""
    from PIL import Image

    def load(paths: np.ndarray) -> np.ndarray:
        xs = []
        for p in paths:
            try:
                with Image.open(p.decode()) as im:
                    im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    xs.append(np.asarray(im).transpose(2, 0, 1))
            except OSError as e:
                raise MoskdError(f"{p.decode()}: unreadable image ({e}); remove or replace it") from None
        return np.stack(xs)

    (paths, y), test, classes = listing
    xt, yt = (load(test[0]), test[1]) if test is not None else (None, None)
    return load(paths), y, xt, yt, classes, folder_aug(image_size)


def check_class_folders(folder: Path, extensions) -> None:
    """Refuse fewer than two class folders (a one-class model is 100% right and learns nothing);
    warn about images lying beside the class folders, which ImageFolder skips."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        found = f" ({classes[0]})" if classes else ""
        raise MoskdError(f"folder:{folder}: found {len(classes)} class folder(s){found} in {folder}; needs >= 2 "
                         f"(one sub-folder of images per class)")
    stray = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in extensions)
    if stray:
        warn(f"folder:{folder}: {len(stray)} image(s) lie outside the class folders and are ignored "
             f"(e.g. {stray[0]}); move them into the sub-folder of their class")


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


def folder_size(listing) -> tuple[int, str]:
    """A folder's own image size (probed from a sample of its files) and how it was found."""

    return probe_size(listing[0][0])


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


def read_source(dataset: str, data_dir: str, download: bool, image_size: int | None):
    """(x, y, x_test | None, y_test | None, class names, AugSpec) of a dataset name."""
    if dataset == "digits":
        return _digits()
    if dataset == "fashion-mnist":
        return _fashion_mnist(data_dir, download)
    if dataset in ("cifar10", "cifar100"):
        return _cifar(dataset, data_dir, download)
    if dataset.startswith("folder:"):
        listing = list_folder(dataset[len("folder:"):])
        return decode_folder(listing, image_size or folder_size(listing)[0])
    raise MoskdError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
