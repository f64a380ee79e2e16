"""Views of an image that suit its resolution, as small records that can be replayed.

Below LARGE_VIEW_MIN px a training view is today's shift + flip (AugSpec below: three
integers, drawn for every image of an epoch from the epoch's generator). At LARGE_VIEW_MIN px and
above it is torchvision's RandomResizedCrop + horizontal flip: a crop box (top, left, height,
width) in the source image's pixels and a flip bit, drawn from a generator keyed by (seed, epoch,
image index) alone, so the view of any image in any epoch can be drawn again without replaying the
epoch (the teacher-output cache stores the teacher's output of exactly that view, as FKD does).
Evaluation at LARGE_VIEW_MIN px and above is resize (shorter side to size / 0.875) + center crop,
torchvision's reference ratio (references/classification: resize 256, crop 224).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LARGE_VIEW_MIN = 64  # px: from here on RandomResizedCrop views; below it shift + flip
RRC_SCALE = (0.08, 1.0)  # share of the source image's area a crop covers (torchvision's default)
RRC_RATIO = (3 / 4, 4 / 3)  # aspect ratio range of a crop (torchvision's default)
EVAL_CROP = 0.875  # center crop / resize ratio of the evaluation view (224 / 256)
VIEW_FIELDS = ("top", "left", "height", "width", "flip")  # one crop view record, int32


# ---------------------------------------------------------------- shift + flip views (below LARGE_VIEW_MIN px)


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


def uses_crops(size: int) -> bool:
    """Whether views at this training size are RandomResizedCrop (else shift + flip)."""
    return size >= LARGE_VIEW_MIN


def view_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one image's view in one epoch: keyed by (seed, epoch, image index) only."""
    key = (seed * 1_000_003 + epoch) * 2_654_435_761 + index  # distinct for realistic seeds/epochs/indices
    return torch.Generator().manual_seed(key % (2**63 - 1))


def crop_view(height: int, width: int, g: torch.Generator, flip: bool = True) -> tuple[int, ...]:
    """One RandomResizedCrop view of an image of height x width px: (top, left, h, w, flip).

    torchvision's algorithm (ten tries at a box of random area and log-uniform aspect ratio that
    fits, else the central crop of the clamped ratio), drawn from `g` instead of the global RNG."""
    area = height * width
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    box = None
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*RRC_SCALE, generator=g).item()
        ratio = math.exp(torch.empty(1).uniform_(*log_ratio, generator=g).item())
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=g).item())
            box = (top, left, h, w)
            break
    if box is None:  # fallback: the whole image, clamped to the ratio range
        in_ratio = width / height
        if in_ratio < RRC_RATIO[0]:
            w, h = width, int(round(width / RRC_RATIO[0]))
        elif in_ratio > RRC_RATIO[1]:
            h, w = height, int(round(height * RRC_RATIO[1]))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flipped = int(torch.randint(0, 2, (1,), generator=g).item()) if flip else 0
    return (*box, flipped)


def eval_view(height: int, width: int, size: int) -> tuple[int, ...]:
    """The evaluation view as a crop record: the central box that resize-to-size/0.875 followed by a
    size x size center crop keeps, in source pixels (no flip)."""
    side = min(height, width) * EVAL_CROP  # source pixels that become `size` output pixels
    h = w = max(1, int(round(side)))
    return ((height - h) // 2, (width - w) // 2, h, w, 0)


def render(image, view: tuple[int, ...], size: int):
    """The size x size RGB/L PIL image of one crop view of a PIL image (bilinear, flip last)."""
    from PIL import Image

    top, left, h, w, flip = view
    out = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out
