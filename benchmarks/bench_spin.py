"""onnxruntime spin-waiting on or off, side by side: a bundle's routed run and its first model alone.

    python benchmarks/bench_spin.py --bundle B [--threads 2] [--rounds 5] [--batches 1 64]

A bundle runs several onnxruntime sessions in turn, one per model of its routing policy, each on its
sub-batch. onnxruntime's default lets each session's idle intra-op threads spin-wait for work; on
two cores those spinning threads take the cores the next session (or another process) needs.
moskd's sessions (moskd.ort.ort_session) turn spinning off. This loads the bundle twice, once
as moskd runs it and once with every session at onnxruntime's defaults (spinning on, same thread
count), and times, in the same rounds in a fresh shuffled order each round (medians): the routed
`run()` on the first test images of the bundle's dataset, and the first model alone. Printed: ms per
batch and spin-off's speed-up over spin-on.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.bundle import load_bundle  # noqa: E402
from inference.quantize_tools import side_by_side  # noqa: E402
from moskd.data import load_data  # noqa: E402


def spinning(bundle, threads: int):
    """The bundle with every ONNX session rebuilt at onnxruntime's default options (spinning on)."""
    import onnxruntime as ort

    def default_session(file: str):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        return ort.InferenceSession(str(bundle.root / file), opts, providers=["CPUExecutionProvider"])

    for e in bundle.manifest["models"]:
        bundle.programs[bundle.route_names.index(e["name"])].session = default_session(e["file"])
    if bundle.selector is not None:
        bundle.selector.session = default_session(bundle.manifest["selector"]["file"])
    return bundle


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="an ONNX bundle (moskd export --format onnx)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    a = p.parse_args(argv)
    off = load_bundle(a.bundle, a.threads)
    if off.manifest["format"] != "onnx":
        sys.exit("bench_spin: the bundle must be ONNX (moskd export --format onnx)")
    on = spinning(load_bundle(a.bundle, a.threads), a.threads)
    images = load_data(off.manifest["dataset"]).splits["test"].images.numpy()
    first = off.route_names[off.policy.entry.get("model", 0)] if off.policy.entry.get("rule") == "fixed" else None
    calls = {}
    for bs in a.batches:
        u8 = np.ascontiguousarray(np.resize(images, (bs, *images.shape[1:])))
        x = np.ascontiguousarray(off.normalize(u8))
        for tag, b in (("spin on", on), ("spin off", off)):
            calls[("routed run()", tag, bs)] = (lambda b=b, u8=u8: b.run(u8))
            if first is not None:
                prog = b.programs[b.route_names.index(first)]
                calls[(f"{first} alone", tag, bs)] = (lambda prog=prog, x=x: prog(x))
    secs = side_by_side(calls, rounds=a.rounds)
    print(f"bundle {a.bundle}; {a.threads} threads; median of {a.rounds} rounds, side by side")
    for what in dict.fromkeys(k[0] for k in secs):
        for bs in a.batches:
            s_on, s_off = secs[(what, "spin on", bs)], secs[(what, "spin off", bs)]
            print(f"  {what:24s} batch {bs:3d}: spin on {1000 * s_on:8.2f} ms, spin off {1000 * s_off:8.2f} ms "
                  f"-> spin off {s_on / s_off:.2f}x")


if __name__ == "__main__":
    main()
