"""The runtimes a bundle's ONNX files run in, and the choice among them (DESIGN.md, "Runtimes and
precisions of a bundle").

    from inference.runtimes import open_program
    prog = open_program("googlenet.onnx", "openvino", "bf16", threads=2)   # prog(x) -> float32 logits

Runtimes: "onnxruntime" (always there; the default) and "openvino" (the optional extra,
`pip install -e '.[openvino]'`). Both read the same files: the fp32 ONNX file and the QDQ int8 one.
Precisions: "fp32"; "bf16", the fp32 file under OpenVINO with its INFERENCE_PRECISION_HINT, only on a
CPU with native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo; elsewhere OpenVINO would emulate it,
slowly); "int8", the QDQ file under either runtime.

`choose` is the rule `moskd export` applies per model and per batch regime: the fastest candidate
whose `select` accuracy is within the bound of onnxruntime fp32 and that is faster than onnxruntime
fp32, else onnxruntime fp32 itself. It is a pure function of the figures, so tests feed it numbers.
This module imports only numpy and the standard library; each runtime is imported when opened.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from moskd.ort import ort_session

ORT, OV = "onnxruntime", "openvino"
RUNTIMES = (ORT, OV)
PRECISIONS = ("fp32", "bf16", "int8")
BASELINE = f"{ORT}/fp32"  # what every candidate is measured against; always measured, always allowed
FLAG_RUNTIME = {"auto": None, "ort": ORT, "openvino": OV}  # --runtime's values -> the runtime they keep
SMALL_BATCH = 4  # a sub-batch of at most this many images runs the batch-1 choice (when it differs)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
OV_MISSING = "openvino is not installed ({}); pip install -e '.[openvino]'"


class RuntimeUnavailable(Exception):
    """This (runtime, precision) cannot run this file on this host; the message says why."""


def key(runtime: str, precision: str) -> str:
    return f"{runtime}/{precision}"


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first 'flags' line of /proc/cpuinfo; empty where there is none)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    return bool(set(BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def openvino_missing() -> str | None:
    """None when openvino imports, else why not (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return OV_MISSING.format(str(e).splitlines()[0] if str(e) else "ImportError")
    return None


def candidates(files: dict, runtime: str = "auto", precision: str = "auto", flags: set[str] | None = None,
               int8_why: str | None = None) -> tuple[list[tuple[str, str]], dict]:
    """(runtime, precision) pairs to measure for a model whose files are `files` (precision -> file:
    "fp32" and, where quantization kept one, "int8"), and {key: why} for those left out. onnxruntime
    fp32 is always measured: it is the baseline and the fallback."""
    keep_rt = FLAG_RUNTIME[runtime]
    ov_why = openvino_missing()
    out, dropped = [(ORT, "fp32")], {}
    for rt in RUNTIMES:
        for pr in PRECISIONS:
            k = key(rt, pr)
            if k == BASELINE:
                continue
            why = None
            if keep_rt not in (None, rt):
                why = f"--runtime {runtime}"
            elif precision not in ("auto", pr):
                why = f"--precision {precision}"
            elif pr == "bf16" and rt == ORT:
                why = "bf16 runs only under openvino (onnxruntime's CPU kernels have no bf16 path)"
            elif pr == "bf16" and not native_bf16(flags):
                why = "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo)"
            elif pr == "int8" and "int8" not in files:
                why = int8_why or "the bundle holds no int8 file for this model"
            elif rt == OV and ov_why:
                why = ov_why
            if why:
                dropped[k] = why
            else:
                out.append((rt, pr))
    return out, dropped


class OrtProgram:
    def __init__(self, path: Path, threads: int | None):

        self.session = ort_session(path, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0].astype(np.float32, copy=False)


_CORE = None


class OpenVinoProgram:
    """An ONNX file compiled by OpenVINO for the CPU, no core pinning (as onnxruntime's sessions: the
    cores are shared). The precision hint is set in every case: on a bf16-capable CPU OpenVINO's default
    is bf16, so fp32 and int8 ask for f32 explicitly (int8: the QDQ-quantized layers run int8, the rest
    f32). Calls are behind a lock (the servers call a program from one batch thread at a time).

    Two compilations of the same file: one stream with `threads` threads (LATENCY) for small batches, and,
    with two or more threads, one stream per thread (THROUGHPUT) that a batch of at least SPLIT_MIN images
    is cut across, one part per stream, run at once. On small maps a layer's work is too little to share
    between threads each step (digits' 8x8, Fashion-MNIST's late 1x1 maps), so parallel parts beat
    parallel threads; images are independent, so the outputs are those of the whole batch.
    `moskd export` times both paths as they serve (b1 and the serving batch) and chooses on those figures."""

    SPLIT_MIN = 16  # images; below it the batch runs whole on the latency compilation

    def __init__(self, path: Path, precision: str, threads: int | None):
        global _CORE
        import openvino as ov

        _CORE = _CORE or ov.Core()
        cfg = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "NUM_STREAMS": 1,
               "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        threads = int(threads or len(os.sched_getaffinity(0)) or 1)
        cfg["INFERENCE_NUM_THREADS"] = threads
        self.compiled = _CORE.compile_model(str(path), "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.parts = []  # one infer request per stream of the THROUGHPUT compilation
        if threads > 1:
            par = _CORE.compile_model(str(path), "CPU", {**cfg, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads})
            self.parts = [par.create_infer_request() for _ in range(threads)]
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            if not self.parts or len(x) < self.SPLIT_MIN:
                self.request.infer({0: x})
                return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)
            chunks = [np.ascontiguousarray(c) for c in np.array_split(x, len(self.parts))]
            for req, c in zip(self.parts, chunks):
                req.start_async({0: c})
            for req in self.parts:
                req.wait()
            return np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in self.parts])


def open_program(path: str | Path, runtime: str = ORT, precision: str = "fp32", threads: int | None = None):
    """A callable (N, C, H, W) float32 -> float32 outputs running `path` in (runtime, precision);
    raises RuntimeUnavailable with the reason when this host cannot (openvino missing, a graph it
    refuses to compile)."""
    if runtime == ORT:
        if precision == "bf16":
            raise RuntimeUnavailable("bf16 runs only under openvino")
        return OrtProgram(Path(path), threads)
    if runtime != OV:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    why = openvino_missing()
    if why:
        raise RuntimeUnavailable(why)
    try:
        return OpenVinoProgram(Path(path), precision, threads)
    except Exception as e:  # noqa: BLE001  OpenVINO refuses some graphs (e.g. an oversized max-pool): say which
        raise RuntimeUnavailable(f"openvino cannot compile {Path(path).name}: {ov_reason(str(e))}") from None


def ov_reason(text: str) -> str:
    """The informative lines of an OpenVINO error (its first lines only name source files): which
    operations failed to convert and a shape check's message, else the last line."""
    lines = [ln.strip(" -") for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if "Conversion is failed" in ln or "larger than" in ln]
    return ("; ".join(keep) or (lines[-1] if lines else "unknown error"))[:300]


def choose(figures: dict, bound: float, regime: str) -> tuple[str, dict]:
    """The candidate to run in one batch regime ("b1", "b32", ...) and {key: why not} for the others.

    figures: {key: {"drop_points": select accuracy points lost against onnxruntime fp32 (None when not
    measured), "ms": {regime: milliseconds per batch}}}; BASELINE must be there. Eligible: within
    `bound` points and strictly faster than the baseline; the fastest eligible wins, else the baseline."""
    base = figures[BASELINE]["ms"][regime]
    why, ok = {}, {}
    for k, f in figures.items():
        if k == BASELINE:
            continue
        ms, drop = f["ms"].get(regime), f.get("drop_points")
        if drop is None:
            why[k] = "no select accuracy measured for it (export again on a host that runs it)"
        elif drop > bound + 1e-9:
            why[k] = f"loses {drop:.2f} points on select (bound {bound})"
        elif ms is None:
            why[k] = f"not timed at {regime}"
        elif not ms < base:
            why[k] = f"{ms:.3f} ms per batch at {regime}, not faster than {BASELINE} ({base:.3f} ms)"
        else:
            ok[k] = ms
    if not ok:
        return BASELINE, why
    best = min(ok, key=ok.get)
    ok[BASELINE] = base
    for k, ms in ok.items():
        if k != best:
            why[k] = f"{ms:.3f} ms per batch at {regime}, slower than {best} ({ok[best]:.3f} ms)"
    return best, why
