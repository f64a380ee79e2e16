"""int8 vs fp32 bundle of one run, side by side: accuracy on `select` and `test`, bytes, latency.

    python benchmarks/bench_int8.py --run-dir RUN --fp32 FP32_BUNDLE --int8 INT8_BUNDLE --out DIR
                                    [--rounds 5] [--threads 2] [--batches 1 64]

The two bundles come from `moskd export --format onnx` and `moskd export --quantize int8` of the same
run (same routing policy). The comparison is inference/int8_report.py's, the one `moskd export
--quantize int8 --report` writes into the bundle; this script runs it on two bundles already
written, with its own rounds, threads and batch sizes. Written to DIR: int8_report.json,
int8_report.md and int8_eval_{select,test}.npz; the markdown is also printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.int8_report import compare_bundles, write_int8_report  # noqa: E402
from moskd.errors import MoskdError  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--fp32", required=True, help="fp32 ONNX bundle (moskd export --format onnx)")
    p.add_argument("--int8", required=True, help="int8 bundle (moskd export --quantize int8)")
    p.add_argument("--out", required=True, help="folder for int8_report.{json,md} and int8_eval_*.npz")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--min-s", type=float, default=0.2, help="seconds each program runs per round (repeats calls)")
    a = p.parse_args(argv)
    try:
        report, arrays = compare_bundles(a.run_dir, a.fp32, a.int8, rounds=a.rounds, threads=a.threads,
                                         batches=a.batches, min_s=a.min_s)
    except MoskdError as e:
        sys.exit(f"bench_int8: {e}")
    print(write_int8_report(Path(a.out), report, arrays))


if __name__ == "__main__":
    main()
