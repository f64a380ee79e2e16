"""Where inference's memory grows with the number of batches, and what bounds it: the predictor alone
(no files), N batches of 256 random images through a run's router (and, with --bundle, an exported
bundle), side by side in one run:

  one batch per model      each routed sub-batch runs as it comes, so the models see every size up to
                           256 (the old `inference`); oneDNN's primitive cache at its default capacity
                           (1024) and at 8 (ONEDNN_PRIMITIVE_CACHE_CAPACITY)
  power-of-two batches     pow2_batches (moskd/batch_shapes.py), what `inference` runs now: each
                           sub-batch in its binary decomposition, at most 9 shapes per model

For each: peak RSS (ru_maxrss) after loading and after the batches, the RSS at the end and again
after glibc's malloc_trim(0) (memory freed by the program but still held by the allocator), and the
most distinct batch sizes one model saw.

    python benchmarks/bench_predictor_rss.py --run RUN [--bundle BUNDLE] [--batches 40 400]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import ctypes, json, os, resource, sys, numpy as np, torch
torch.set_num_threads(1)
import inference.runtimes
from inference.predict import load_predictor
run, bundle, n, pow2 = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4] == '1'
seen = {}  # model -> the batch sizes it ran
open_program = inference.runtimes.open_program
def counted(path, *a, **k):
    program = open_program(path, *a, **k)
    return lambda x: seen.setdefault(str(path), set()).add(len(x)) or program(x)
inference.runtimes.open_program = counted  # a bundle's ONNX programs
p = load_predictor(None if bundle else run, bundle, 'cpu', 'fold+cl', pow2_batches=pow2)
if not bundle:
    for k, m in enumerate([p.router.selector, *p.router.models]):
        m.register_forward_hook(lambda mod, inp, out, k=k: seen.setdefault(k, set()).add(len(inp[0])))
size = p.card['input_size']
rng = np.random.default_rng(0)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
before = peak()
for _ in range(n):
    p.run(rng.integers(0, 255, (256, *size), dtype=np.uint8))
after, now = peak(), rss()
ctypes.CDLL('libc.so.6').malloc_trim(0)
print(json.dumps({'before': before, 'after': after, 'now': now, 'trimmed': rss(),
                  'shapes': max((len(s) for s in seen.values()), default=0)}))
"""


def child(run: str, bundle: str | None, batches: int, pow2: bool, cache: str) -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, run, bundle or "", str(batches), str(int(pow2))], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--run", required=True)
    p.add_argument("--bundle", default=None, help="an ONNX bundle of the run (moskd export --format onnx)")
    p.add_argument("--batches", type=int, nargs="+", default=[40, 400])
    a = p.parse_args(argv)
    setups = [("run", None, False, "1024"), ("run", None, False, "8"), ("run", None, True, "1024")]
    if a.bundle:
        setups += [("bundle", a.bundle, False, "1024"), ("bundle", a.bundle, True, "1024")]
    for what, bundle, pow2, cache in setups:
        label = (f"{what}, {'power-of-two batches' if pow2 else 'one batch per model'}"
                 + (f", oneDNN primitive cache {cache}" if what == "run" else ""))
        growth = []
        for n in a.batches:
            r = child(a.run, bundle, n, pow2, cache)
            growth.append(r["after"] - r["before"])
            print(f"{label}: {n} batches of 256: peak RSS {r['before']:.0f} MiB after loading, {r['after']:.0f} MiB "
                  f"after the batches (+{growth[-1]:.0f}); RSS at the end {r['now']:.0f} MiB, "
                  f"{r['trimmed']:.0f} after malloc_trim; at most {r['shapes']} batch sizes per model", flush=True)
        if len(growth) > 1:
            print(f"{label}: growth over {a.batches[-1]} batches / over {a.batches[0]}: "
                  f"{growth[-1] / max(growth[0], 1):.2f}x (+{growth[-1] - growth[0]:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
