"""A bundle against the run it was exported from, on a whole split, side by side in one run.

    python benchmarks/check_bundle.py --run-dir RUN --bundle DIR [--bundle DIR2 ...] [--split test]

Runs the run's router (checkpoints, eager, as `inference --run-dir --fast eager` does) and each
bundle's runtime on every image of the split (the run's own dataset and split settings), and prints
label and route agreement, the largest logit difference and each one's seconds (batches of 256).
Both decide through the run's routing policy (RUN/policy.json; the bundle carries a copy).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from inference.bundle import load_bundle
from inference.router import load_router
from moskd.data import load_data
from moskd.views import normalize


def batched(fn, images, bs=256):
    return [fn(images[i:i + bs]) for i in range(0, len(images), bs)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--bundle", required=True, action="append")
    p.add_argument("--split", default="test")
    a = p.parse_args(argv)
    run = load_router(a.run_dir)
    cfg = run.selector_config
    data = load_data(run.card["dataset"], **{k: cfg[k] for k in ("split_seed", "select_fraction", "test_fraction")
                                             if k in cfg})
    images = data.splits[a.split].images
    mean, std = torch.tensor(run.card["mean"]), torch.tensor(run.card["std"])
    t0 = time.perf_counter()
    outs = batched(lambda x: run.router(normalize(x, mean, std)), images)
    t_run = time.perf_counter() - t0
    logits = torch.cat([o.logits for o in outs]).numpy()
    routes = torch.cat([o.routes for o in outs]).numpy()
    print(f"{a.split}: {len(images)} images; run-dir router {t_run:.2f} s")
    for path in a.bundle:
        b = load_bundle(path)
        t0 = time.perf_counter()
        bo = batched(lambda x: b.run(x.numpy()), images)
        t_b = time.perf_counter() - t0
        bl = np.concatenate([o.logits for o in bo])
        br = np.concatenate([o.routes for o in bo])
        same = int((bl.argmax(1) == logits.argmax(1)).sum())
        print(f"  {path} ({b.format}): labels equal {same}/{len(images)}, routes equal "
              f"{int((br == routes).sum())}/{len(images)}, max |logit diff| {np.abs(bl - logits).max():.2e}, "
              f"{t_b:.2f} s ({t_run / t_b:.2f}x the run-dir router)")


if __name__ == "__main__":
    main()
