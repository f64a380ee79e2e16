"""The streaming backend: an image folder read file by file, decoded and viewed in DataLoader workers.

Behind the same interface as moskd.loader.TensorLoader (set_epoch, len, batches of (normalised
images, targets, *extras) on the device), and drawing from the same places: the order of an epoch
is a randperm from a generator seeded by (seed, epoch), sharded per rank as DistributedSampler does
(padded by wrapping when training, disjoint when evaluating); shift + flip views (below 64 px) are
drawn from that generator for every image exactly as TensorLoader draws them, so streamed and
in-memory batches of the same folder are identical; crop views (64 px and up, moskd.views) are
keyed by (seed, epoch, image index). Nothing depends on worker count or worker RNG, so a run killed
mid-epoch and resumed from its last epoch is bit-exact.

A file that cannot be decoded (unreadable, 0 bytes, truncated, not an image, over MAX_PIXELS) is
left out of its batch, named in one warning line the first time it is met, and counted (skipped).
Under torchrun a training batch whose every file is unreadable is replaced by the rank's last batch:
DDP reduces gradients at every step, so a rank that skipped one would leave the others waiting.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from moskd.errors import MoskdError, warn
from moskd.shards import rank_batches, rank_order
from moskd.views import AugSpec, apply_views, normalize, sample_views
from moskd.views import crop_view, eval_view, render, uses_crops, view_generator

MAX_PIXELS = 64_000_000  # a file claiming more pixels than this is a decompression bomb: skipped
STATS_SAMPLE = 512  # training images whose pixels give mean/std


@dataclass
class FileSet:
    """A split held as file paths (the streaming counterpart of moskd.data.ImageSet)."""
    paths: np.ndarray  # (N,) bytes: file paths (a numpy array, not a list: workers share it unchanged)
    targets: torch.Tensor  # (N,) int64
    index: torch.Tensor  # (N,) position in the folder's listing

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def images(self):
        raise MoskdError("this step needs the images in memory, and this folder is streamed; raise --max-ram "
                         "to hold it in memory, or use a smaller folder")

    def subset(self, idx: np.ndarray) -> "FileSet":
        return FileSet(self.paths[idx], self.targets[idx], self.index[idx])


def open_image(path: str):
    """The decoded RGB PIL image of a file, or (None, why) when it cannot be one."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    return None, f"{im.width}x{im.height} px, over {MAX_PIXELS} (decompression bomb?)"
                im.load()
                return im.convert("RGB"), ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


class FileViews(Dataset):
    """Item (index, epoch) -> (uint8 (3, size, size) or None, index, view record, why)."""

    def __init__(self, files: FileSet, size: int, seed: int, train: bool, flip: bool):
        self.files, self.size, self.seed, self.train, self.flip = files, size, seed, train, flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        i, epoch, *given = item  # given: a cached crop view record to render instead of drawing one
        from PIL import Image

        im, why = open_image(self.files.paths[i].decode())
        if im is None:
            return None, i, (0, 0, 0, 0, 0), why
        if not uses_crops(self.size):  # the in-memory path's squash; shifts are applied per batch
            view = (0, 0, im.height, im.width, 0)
            im = im.resize((self.size, self.size), Image.BILINEAR)
        else:
            if given:
                view = tuple(given[0])
            elif self.train:
                view = crop_view(im.height, im.width, view_generator(self.seed, epoch, i), self.flip)
            else:
                view = eval_view(im.height, im.width, self.size)
            im = render(im, view, self.size)
        return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy()), i, view, ""


def collate(items):
    """A batch of the decodable items; the others come back as (index, why) for the warning."""
    good = [it for it in items if it[0] is not None]
    bad = [(it[1], it[3]) for it in items if it[0] is None]
    x = torch.stack([it[0] for it in good]) if good else torch.empty(0, dtype=torch.uint8)
    idx = torch.tensor([it[1] for it in good], dtype=torch.long)
    views = torch.tensor([it[2] for it in good], dtype=torch.int32).view(-1, 5)
    return x, idx, views, bad


class StreamLoader:
    """Batches of a FileSet; the interface and the draws of moskd.loader.TensorLoader (see above).

    workers: DataLoader worker processes decoding files (0: in this process). The last extra of a
    training batch under crop views is the batch's view records (int32 (B, 5), moskd.views).
    views: optional (records (N,K,F), outputs (N,K,..)) of the teacher cache (students.cache.CachedRows);
    each epoch every image takes one of its K cached views, and that view's teacher logits come as
    the last extra, as in TensorLoader."""

    def __init__(self, files: FileSet, *, size, mean, std, batch_size, device="cpu", train=False,
                 aug: AugSpec | None = None, extras=(), seed=0, rank=0, world=1, workers=0, views=None):
        self.files, self.size, self.targets, self.extras = files, size, files.targets, tuple(extras)
        self.batch_size, self.device, self.train = batch_size, torch.device(device), train
        self.aug = aug if train else None
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.mean = torch.tensor(mean, device=self.device)
        self.std = torch.tensor(std, device=self.device)
        self.views = views if train else None
        self.epoch = 0
        self.skipped: set[str] = set()  # paths of files that could not be decoded (warned once each)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self, g: torch.Generator) -> torch.Tensor:
        return rank_order(len(self.targets), self.train, self.rank, self.world, g)

    def __len__(self) -> int:
        return rank_batches(len(self.targets), self.train, self.rank, self.world, self.batch_size)

    def _batches(self, idx: torch.Tensor, records=None):
        flip = bool(self.aug and self.aug.flip)
        ds = FileViews(self.files, self.size, self.seed, self.train, flip)
        item = (lambda i: (i, self.epoch)) if records is None else (lambda i: (i, self.epoch, records[i].tolist()))
        batches = [[item(int(i)) for i in idx[s:s + self.batch_size]] for s in range(0, len(idx), self.batch_size)]
        return DataLoader(ds, batch_sampler=batches, num_workers=self.workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.seed))  # not the global RNG

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)  # as TensorLoader
        idx = self._indices(g)
        crops = uses_crops(self.size)
        shifts = self.train and self.aug is not None and not crops
        params, records, pick = None, None, None
        if self.views is not None:  # cached views: each image takes one of its K, as TensorLoader
            pick = torch.randint(0, self.views[0].shape[1], (len(self.targets),), generator=g)
            params = self.views[0][torch.arange(len(self.targets)), pick]  # (N, F) the picked view records
            records = params if crops else None
        elif shifts:
            params = sample_views(len(self.targets), self.aug, g)  # one draw per image per epoch
        last = None  # under DDP every rank takes as many steps as the others (see the module's doc)
        for x, i, views, bad in self._batches(idx, records):
            self._warn(bad)
            if not len(i):
                if self.train and self.world > 1:
                    if last is None:
                        raise MoskdError(f"rank {self.rank}: every file of its first training batch of epoch "
                                         f"{self.epoch + 1} is unreadable (named above); remove or replace them")
                    yield last
                continue
            x = x.to(self.device, non_blocking=True)
            if shifts:
                x = apply_views(x, params[i], self.aug.pad)
            extra = [e[i].to(self.device, non_blocking=True) for e in self.extras]
            if self.views is not None:
                extra.append(self.views[1][i, pick[i]].to(self.device, torch.float32))
            elif self.train and crops:
                extra.append(views.to(self.device))
            last = (normalize(x, self.mean, self.std), self.targets[i].to(self.device), *extra)
            yield last

    def _warn(self, bad) -> None:
        for i, why in bad:
            path = self.files.paths[i].decode()
            if path not in self.skipped:
                self.skipped.add(path)
                warn(f"skipped {path}: not a readable image ({why}); remove or replace it")


def file_fingerprint(paths: np.ndarray) -> bytes:
    """What identifies a listing's files without reading them: paths, byte sizes, modification times (ns)."""

    stats = np.array([(lambda st: (st.st_size, st.st_mtime_ns))(os.stat(p)) for p in paths], np.int64)
    return paths.tobytes() + stats.tobytes()


def sample_stats(files: FileSet, size: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of up to STATS_SAMPLE evaluation views of training files."""
    n = len(files)
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:STATS_SAMPLE])
    ds = FileViews(files, size, 0, train=False, flip=False)
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for i in pick:
        x = ds[(int(i), 0)][0]
        if x is None:
            continue
        px = x.reshape(3, -1).double().numpy() / 255.0
        total, total_sq, count = total + px.sum(1), total_sq + (px ** 2).sum(1), count + px.shape[1]
    if count == 0:
        raise MoskdError(f"none of {len(pick)} sampled training images could be decoded; check the folder")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0) * count / max(count - 1, 1))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


def probe_size(paths: np.ndarray, sample: int = 32) -> tuple[int, str]:
    """The side of the most common shorter side among up to `sample` files spread over the folder."""
    from PIL import Image

    sides = []
    for p in paths[np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int)]:
        try:
            with Image.open(p.decode()) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, SyntaxError):
            continue
    if not sides:
        raise MoskdError("no readable image among the sampled files; check the folder or pass --image-size")
    values, counts = np.unique(sides, return_counts=True)
    side = int(values[counts.argmax()])
    return side, f"{len(sides)} sampled files, most common shorter side {side} px"
