"""OpenVINO int8 with a static batch shape against the bundle's dynamic one: speed and accuracy.

    python benchmarks/bench_ov_static.py BUNDLE --run-dir RUN [--batch 64] [--threads 2] [--rounds 9]
                                         [--images 4096] [--out FILE]

The bundle's ONNX files have a dynamic batch axis, and OpenVINO compiles them for any batch size. A
model reshaped to a fixed batch can get other kernels. For each model with an int8 file, both
compilations run the same way as the bundle's large batches (THROUGHPUT, one stream per thread, the
batch cut into one part per stream, so the static shape is the part's). Printed per model:
- ms per batch of both (medians, interleaved rounds) and their ratio paired per round;
- test accuracy of both on the run's first --images test images (in calls of --batch), next to
  onnxruntime fp32 on the same images;
- how often the two int8 compilations agree on the label, and their largest logit difference.

Why it is a benchmark and not a choice the export makes: a static shape is only served when a call has
exactly that size, so adopting it needs an accuracy verdict per shape (see the accuracy columns).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.bundle import entry_files, load_bundle  # noqa: E402
from inference.quantize_tools import run_splits  # noqa: E402
from inference.router import load_router  # noqa: E402


def compiled(core, path: Path, threads: int, part: int | None):
    """A callable running `path` as the bundle's large batches do; part: the static part size."""
    model = core.read_model(str(path))
    if part is not None:
        model.reshape([part, *[d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]])
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": threads, "PERFORMANCE_HINT": "THROUGHPUT",
           "ENABLE_CPU_PINNING": False, "INFERENCE_NUM_THREADS": threads}
    requests = [core.compile_model(model, "CPU", cfg).create_infer_request()]
    requests += [requests[0].get_compiled_model().create_infer_request() for _ in range(threads - 1)]

    def run(x: np.ndarray) -> np.ndarray:
        parts = np.array_split(x, len(requests))
        for r, p in zip(requests, parts):
            r.start_async({0: np.ascontiguousarray(p)})
        for r in requests:
            r.wait()
        return np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in requests])

    return run


def timed(calls: dict, rounds: int, min_s: float = 0.2) -> dict:
    out = {k: [] for k in calls}
    for r in range(rounds):
        for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < min_s:
                calls[k]()
                n += 1
            out[k].append(1000 * (time.perf_counter() - t0) / n)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--run-dir", required=True, help="the run the bundle came from (its test images)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--out", default=None, help="also write the printed lines to FILE")
    a = p.parse_args(argv)
    import openvino as ov

    core = ov.Core()
    base = load_bundle(a.bundle, a.threads, force="onnxruntime/fp32")
    x, y = run_splits(load_router(a.run_dir))["test"]
    n = min(len(x), a.images) // a.batch * a.batch
    xn, y = np.ascontiguousarray(base.normalize(x[:n])), y[:n]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    lines = [f"{a.bundle}: {cpu}, {a.threads} threads, batch {a.batch} in {a.threads} parts, median of {a.rounds} "
             f"rounds; accuracy on {n} test images",
             "| model | dynamic ms | static ms | dynamic/static paired (min-median-max) | ORT fp32 acc | "
             "int8 dynamic acc | int8 static acc | label agreement | max logit diff |", "|---|" + "---:|" * 8]
    for e in base.manifest["models"]:
        files = entry_files(e)
        if "int8" not in files:
            continue
        path = Path(a.bundle) / files["int8"]
        progs = {"dynamic": compiled(core, path, a.threads, None),
                 "static": compiled(core, path, a.threads, -(-a.batch // a.threads))}
        xb = xn[:a.batch]
        t = timed({k: (lambda f=f: f(xb)) for k, f in progs.items()}, a.rounds)
        outs = {k: np.concatenate([f(xn[i:i + a.batch]) for i in range(0, n, a.batch)]) for k, f in progs.items()}
        fp32 = base.programs[base.route_names.index(e["name"])](xn)
        r = sorted(d / s for d, s in zip(t["dynamic"], t["static"]))
        acc = {k: 100 * float((o.argmax(1) == y).mean()) for k, o in outs.items()}
        lines.append(f"| {e['name']} | {statistics.median(t['dynamic']):.2f} | {statistics.median(t['static']):.2f} | "
                     f"{r[0]:.2f}-{statistics.median(r):.2f}-{r[-1]:.2f}x | {100 * float((fp32.argmax(1) == y).mean()):.2f} | "
                     f"{acc['dynamic']:.2f} | {acc['static']:.2f} | "
                     f"{100 * float((outs['dynamic'].argmax(1) == outs['static'].argmax(1)).mean()):.2f}% | "
                     f"{float(np.abs(outs['dynamic'] - outs['static']).max()):.3f} |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
