"""How many images of each routed batch reach each model: the first batch against the test set's mean.

    python benchmarks/routed_deferrals.py BUNDLE --run-dir RUN [--batch 64] [--out FILE]

A routed batch costs what its deferrals cost, so a timing of one batch stands for the policy only when
that batch defers as many images as the test set does on average. Printed per model (route order): the
images it runs in the test set's first batch, and mean, max and the share of batches where it runs at
all, over every whole batch of the test set, with the bundle as chosen.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.bundle import load_bundle  # noqa: E402
from inference.quantize_tools import run_splits  # noqa: E402
from inference.router import load_router  # noqa: E402


def per_batch(bundle, images: np.ndarray, bs: int) -> np.ndarray:
    """(batches, models): images of each whole batch that each model ran on."""
    rows = []
    for i in range(0, len(images) // bs * bs, bs):
        bits = bundle.run(images[i:i + bs]).models
        rows.append([int(((bits >> k) & 1).sum()) for k in range(len(bundle.route_names))])
    return np.asarray(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--run-dir", required=True, help="the run the bundle came from (its test images)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=None, help="also write the printed lines to FILE")
    a = p.parse_args(argv)
    b = load_bundle(a.bundle)
    x = run_splits(load_router(a.run_dir))["test"][0]
    counts = per_batch(b, x, a.batch)
    lines = [f"{a.bundle}: {len(counts)} whole batches of {a.batch} test images, the bundle as chosen",
             "| model | first batch | mean per batch | max | batches where it runs |", "|---|---:|---:|---:|---:|"]
    for k, name in enumerate(b.route_names):
        c = counts[:, k]
        lines.append(f"| {name} | {c[0]} | {c.mean():.2f} | {c.max()} | {100 * (c > 0).mean():.0f}% |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
