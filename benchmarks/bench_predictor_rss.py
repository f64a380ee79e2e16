"""Where inference's memory grows with the number of batches: the predictor alone (no files), N batches
of random images through a run's router, peak RSS before and after, with oneDNN's primitive cache at
its default capacity (1024) and at 8 (ONEDNN_PRIMITIVE_CACHE_CAPACITY). Routed sub-batches vary in size,
and each new shape adds primitives to that cache until it is full.

    python benchmarks/bench_predictor_rss.py --run RUN [--batches 40 400]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import resource, sys, numpy as np, torch
torch.set_num_threads(1)
from inference.predict import load_predictor
p = load_predictor(sys.argv[1], None, 'cpu', 'fold+cl')
size = p.card['input_size']
rng = np.random.default_rng(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for _ in range(int(sys.argv[2])):
    p.run(rng.integers(0, 255, (256, *size), dtype=np.uint8))
print(round(before), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--run", required=True)
    p.add_argument("--batches", type=int, nargs="+", default=[40, 400])
    a = p.parse_args(argv)
    root = str(Path(__file__).resolve().parent.parent)
    for cap in ("1024", "8"):
        for n in a.batches:
            env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": cap}
            out = subprocess.run([sys.executable, "-c", CHILD, a.run, str(n)], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"oneDNN primitive cache {cap}: {n} batches of 256: peak RSS {out[0]} MiB after loading, "
                  f"{out[1]} MiB after the batches (+{int(out[1]) - int(out[0])})")


if __name__ == "__main__":
    main()
