"""The streaming data path measured side by side in one run (figures in docs/BENCHMARKS.md):

  1. peak RSS of loading a folder of N JPEGs at SIDE px and one pass of the training loader over all
     of it with a small forward pass per batch, for each N (--sizes): memory should not grow with N;
     with --old-code PATH also the in-memory loading of the smallest folder by that checkout's code
     (its moskd.data.load_data at --image-size SIDE), as today's path costs it;
  2. loader images/s (decode + RandomResizedCrop + flip + normalise) with 0, 1 and 2 workers at each
     --speed-sides size;
  3. with --wait-steps S: the share of a ResNet50 training step (imagenet stem, batch --wait-batch,
     AdamW) spent waiting for the streaming loader at --side px, with 0 and 2 workers: the seconds
     blocked in next(loader) over the seconds of S steps (the first 2 steps left out: workers start).

    python benchmarks/bench_data.py --root /tmp/bench-data [--sizes 10000 100000] [--side 96]
        [--speed-sides 96 224] [--speed-images 2000] [--old-code /path/to/old/checkout] [--wait-steps 12]

Folders are Fashion-MNIST images (cycled when N exceeds the 70,000 official images) resized to the
side and saved as RGB JPEGs under ROOT, written once and reused. Each RSS figure comes from its own
child process (ru_maxrss, the process's high-water mark).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_folder(out: Path, n: int, side: int) -> Path:
    """N RGB JPEGs of side x side px in 10 class folders (Fashion-MNIST images, cycled)."""
    import numpy as np
    from PIL import Image

    from moskd.datasets import _fashion_files, read_idx

    if (out / "done").is_file():
        return out
    x, y, xt, yt = (read_idx(f) for f in _fashion_files("data"))
    images, labels = np.concatenate([x, xt]), np.concatenate([y, yt])
    for c in range(10):
        (out / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        j = i % len(images)
        Image.fromarray(images[j]).resize((side, side), Image.BICUBIC).convert("RGB").save(
            out / f"c{labels[j]}" / f"{i:06d}.jpg", quality=90)
    (out / "done").write_text(str(n))
    return out


def child_rss(folder: str, side: int, old: str | None) -> dict:
    """In this (child) process: load the folder and pass over it; peak RSS in MiB."""
    if old:  # the other checkout's in-memory loading, as it is today
        sys.path.insert(0, old)
        for m in [m for m in sys.modules if m.startswith("moskd")]:
            del sys.modules[m]
    import torch

    from moskd.data import load_data

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_data(f"folder:{folder}", image_size=side, select_fraction=0.05, test_fraction=0.05)
    seen = 0
    if not old:
        from moskd.loader import make_loader

        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
        with torch.inference_mode():
            for batch in make_loader(data, "train", 256, train=True):
                net(batch[0])
                seen += len(batch[1])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"rss_mib": round(rss, 1), "train_images": len(data.splits["train"]), "passed": seen,
            "backend": getattr(data, "backend", "memory"), "seconds": round(time.perf_counter() - t0, 1)}


def measure_rss(folder: Path, side: int, old: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder), "--side", str(side)] + (["--old-code", old] if old else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loader_speed(folder: Path, side: int, workers: int) -> float:
    """Images/s of one pass of the training loader (decode + crop view + flip + normalise)."""
    import torch

    from moskd.data import load_data
    from moskd.loader import make_loader

    torch.set_num_threads(1)
    data = load_data(f"folder:{folder}", image_size=side, select_fraction=0.05, test_fraction=0.05, workers=workers)
    loader = make_loader(data, "train", 64, train=True)
    t0, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch[1])
    return seen / (time.perf_counter() - t0)


def data_wait_share(folder: Path, side: int, workers: int, steps: int, batch: int) -> dict:
    """Seconds blocked in next(loader) against a ResNet50 step's seconds, in one training loop
    (torch on every core; the loader's workers share them, as they do in training)."""
    import torch

    from moskd.data import load_data
    from moskd.loader import make_loader
    from moskd.models import create_model
    from moskd.precision import choose_precision

    torch.set_num_threads(os.cpu_count() or 1)
    prec = choose_precision("cpu", training=True)  # as the training loop: bf16 autocast where native, NHWC
    data = load_data(f"folder:{folder}", image_size=side, select_fraction=0.05, test_fraction=0.05, workers=workers)
    net = prec.model(create_model("resnet50", data.num_classes, in_chans=3, stem="imagenet").train())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    wait = step = 0.0
    it = iter(make_loader(data, "train", batch, train=True))
    for k in range(steps + 2):
        t0 = time.perf_counter()
        x, y = next(it)[:2]
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(prec.forward(net, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if k >= 2:  # the first batches pay the workers' start
            wait, step = wait + t1 - t0, step + t2 - t1
    return {"wait_s": wait, "compute_s": step, "share": wait / (wait + step), "precision": prec.name}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--root", type=Path, default=Path("/tmp/bench-data"))
    p.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000], help="folder sizes for peak RSS (none: skip)")
    p.add_argument("--side", type=int, default=96)
    p.add_argument("--speed-sides", type=int, nargs="*", default=[96, 224])
    p.add_argument("--speed-images", type=int, default=2000)
    p.add_argument("--old-code", default=None, help="a checkout whose in-memory loading to measure beside")
    p.add_argument("--wait-steps", type=int, default=0, help="ResNet50 steps for the data-wait share (0: skip)")
    p.add_argument("--wait-batch", type=int, default=64)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child_rss(a.child, a.side, a.old_code)))
        return
    print(f"host: {os.cpu_count()} CPUs; torch threads 1 per process (the data-wait loop: all of them)")
    if a.wait_steps:
        folder = make_folder(a.root / f"n{a.speed_images}-s{a.side}", a.speed_images, a.side)
        for w in (0, 2):
            r = data_wait_share(folder, a.side, w, a.wait_steps, a.wait_batch)
            print(f"ResNet50 training ({r['precision']}) at {a.side}px, batch {a.wait_batch}, {a.wait_steps} steps, {w} workers: "
                  f"waiting for data {r['wait_s']:.2f} s of {r['wait_s'] + r['compute_s']:.2f} s = "
                  f"{100 * r['share']:.1f}% (target <= 10% with 2 workers)")
    base = None
    for n in a.sizes:
        r = measure_rss(make_folder(a.root / f"n{n}-s{a.side}", n, a.side), a.side)
        base = base or r["rss_mib"]
        print(f"peak RSS, {n} JPEGs at {a.side}px, load + one training pass + forward ({r['backend']}, "
              f"{r['passed']} images, {r['seconds']} s): {r['rss_mib']} MiB ({r['rss_mib'] / base:.3f}x the first)")
    if a.old_code and a.sizes:
        n = a.sizes[0]
        r = measure_rss(a.root / f"n{n}-s{a.side}", a.side, a.old_code)
        print(f"peak RSS, {n} JPEGs at {a.side}px, loading only, the old in-memory code ({a.old_code}): "
              f"{r['rss_mib']} MiB ({r['seconds']} s)")
    for side in a.speed_sides:
        folder = make_folder(a.root / f"n{a.speed_images}-s{side}", a.speed_images, side)
        rates = {w: loader_speed(folder, side, w) for w in (0, 1, 2)}
        print(f"loader images/s at {side}px (decode + RandomResizedCrop + flip, batch 64): "
              + ", ".join(f"{w} workers {r:.0f}" for w, r in rates.items())
              + f"; 2 workers / 0 = {rates[2] / rates[0]:.2f}x")


if __name__ == "__main__":
    main()
