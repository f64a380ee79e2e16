"""Write the official Fashion-MNIST files as an ImageFolder of RGB JPEGs (train/ and test/, one sub-folder
per class), the real-resolution example's data (configs/fashion-folder-64.yaml):

    python benchmarks/fashion_folder.py OUT [--size 64] [--train N] [--test N] [--data-dir DIR]

Reads the four official files as `--dataset fashion-mnist` does (DIR flat or torchvision's layout, or
/usr/share/datasets/fashion-mnist from `apt-get install dataset-fashion-mnist`); each 28x28 grayscale
image is resized (bicubic) to SIZE x SIZE, replicated to RGB and saved as JPEG quality 90. --train/--test
keep the first N images of each file (all by default). Existing files are kept (a rerun finishes an
interrupted one).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moskd.datasets import FASHION_CLASSES, _fashion_files, read_idx  # noqa: E402


def folder_names() -> list[str]:
    """Class folder names in label order ('/' is not allowed in a name: T-shirt/top -> T-shirt_top); sorted
    as ImageFolder sorts them, they keep label order only by the index prefix."""
    return [f"{i}-{name.replace('/', '_').replace(' ', '_')}" for i, name in enumerate(FASHION_CLASSES)]


def write_split(images, labels, out: Path, size: int, quality: int = 90) -> int:
    from PIL import Image

    names, written = folder_names(), 0
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (a, y) in enumerate(zip(images, labels)):
        path = out / names[int(y)] / f"{i:05d}.jpg"
        if path.exists():
            continue
        im = Image.fromarray(a).resize((size, size), Image.BICUBIC).convert("RGB")
        im.save(path, quality=quality)
        written += 1
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=64, help="side of every image (px)")
    p.add_argument("--train", type=int, default=None, help="first N training images (default: all 60,000)")
    p.add_argument("--test", type=int, default=None, help="first N test images (default: all 10,000)")
    p.add_argument("--data-dir", default="data", help="where the four official files are")
    a = p.parse_args(argv)
    x, y, xt, yt = (read_idx(f) for f in _fashion_files(a.data_dir))
    n = write_split(x[:a.train], y[:a.train], a.out / "train", a.size)
    m = write_split(xt[:a.test], yt[:a.test], a.out / "test", a.size)
    print(f"wrote {n} train and {m} test JPEGs ({a.size}x{a.size} RGB) under {a.out}")


if __name__ == "__main__":
    main()
