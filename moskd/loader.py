"""Parametric augmentation and the in-memory loader every stage trains and evaluates with.

A view of an image is three integers (horizontal shift, vertical shift, flip), so the teacher-logit
cache can store exactly which view each cached logit belongs to, and augmentation runs as one
batched gather on the training device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from moskd.data import DataBundle


@dataclass(frozen=True)
class AugSpec:
    pad: int = 0  # max shift in pixels each way (random crop from a zero-padded image)
    flip: bool = False  # random horizontal flip


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
                rank=0, world=1, extras=(), views=None):
    """The loader of one split, from the backend the data is held in (DataBundle.backend)."""
    s = data.splits[split]
    if data.backend == "stream":
        from moskd.streaming import StreamLoader

        return StreamLoader(s, size=data.image_size, mean=data.mean, std=data.std, batch_size=batch_size,
                            device=device, train=train, aug=data.aug, extras=extras, seed=seed, rank=rank,
                            world=world, workers=data.workers, views=views)
    return TensorLoader(
        s.images, s.targets, mean=data.mean, std=data.std, batch_size=batch_size,
        device=device, train=train, aug=data.aug, extras=extras, views=views, seed=seed, rank=rank, world=world,
    )


def parts_loader(data: DataBundle, parts: list[tuple[str, torch.Tensor | None]], *, mean, std, batch_size,
                 device="cpu", train=False, augment=True, extras=(), seed=0, rank=0, world=1):
    """A loader over the images `idx` of each (split, idx) part, concatenated (idx None: the whole split),
    normalised with the given mean/std (a model card's), from either backend: for stages that read
    other splits than make_loader's (selector labels and training, the report)."""
    picked = [(data.splits[s], slice(None) if i is None else i) for s, i in parts]
    targets = torch.cat([s.targets[i] for s, i in picked])
    aug = data.aug if (train and augment) else None
    if data.backend == "stream":
        from moskd.streaming import FileSet, StreamLoader

        files = FileSet(np.concatenate([s.paths[np.arange(len(s))[i]] for s, i in picked]), targets,
                        torch.cat([s.index[i] for s, i in picked]))
        return StreamLoader(files, size=data.image_size, mean=mean, std=std, batch_size=batch_size, device=device,
                            train=train, aug=aug, extras=extras, seed=seed, rank=rank, world=world,
                            workers=data.workers)
    images = picked[0][0].images[picked[0][1]] if len(picked) == 1 else torch.cat([s.images[i] for s, i in picked])
    return TensorLoader(images, targets, mean=mean, std=std, batch_size=batch_size, device=device, train=train,
                        aug=aug, extras=extras, seed=seed, rank=rank, world=world)
