"""The loaders every stage trains and evaluates with: the in-memory TensorLoader, and make_loader /
parts_loader, which hand out either it or the streaming loader (moskd.streaming) for a DataBundle.
Views (shift + flip, crops) and normalisation live in moskd.views.
"""
from __future__ import annotations


import numpy as np
import torch

from moskd.data import DataBundle
from moskd.streaming import FileSet, StreamLoader
from moskd.shards import rank_batches, rank_order
from moskd.views import AugSpec, apply_views, normalize, sample_views


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
        return rank_order(len(self.targets), self.train, self.rank, self.world, g)

    def __len__(self) -> int:
        return rank_batches(len(self.targets), self.train, self.rank, self.world, self.batch_size)

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

        files = FileSet(np.concatenate([s.paths[np.arange(len(s))[i]] for s, i in picked]), targets,
                        torch.cat([s.index[i] for s, i in picked]))
        return StreamLoader(files, size=data.image_size, mean=mean, std=std, batch_size=batch_size, device=device,
                            train=train, aug=aug, extras=extras, seed=seed, rank=rank, world=world,
                            workers=data.workers)
    images = picked[0][0].images[picked[0][1]] if len(picked) == 1 else torch.cat([s.images[i] for s, i in picked])
    return TensorLoader(images, targets, mean=mean, std=std, batch_size=batch_size, device=device, train=train,
                        aug=aug, extras=extras, seed=seed, rank=rank, world=world)
