"""The onnxruntime session every ONNX program of moskd runs in: a bundle's models, the quantizer's
timings, the runtime choice, an imported ONNX teacher and the benchmarks. One place, so what is
measured is what ships."""
from __future__ import annotations


def ort_session(model, threads: int | None = None):
    """The onnxruntime session every moskd ONNX program runs in (bundle, quantization, benchmarks):
    `threads` intra-op threads, one inter-op thread, and no spin-waiting. A bundle runs several
    sessions in turn (each model of the policy on its sub-batch), and by default each session's idle
    threads keep spinning on the cores the next session needs; so does any other process's work
    (benchmarks/bench_spin.py measures both settings side by side)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
