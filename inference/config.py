"""The inference command's settings (torch-free, so --help and config checks never load torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moskd.config import field


@dataclass
class InferenceConfig:
    run_dir: str = field("runs/digits", "run directory holding teacher/, students/ and selector/")
    bundle: Optional[str] = field(None, "predict from a deployment bundle (moskd export) instead of --run-dir",
                                  metavar="DIR")
    dataset: Optional[str] = field(None, "evaluate on this dataset (must be the run's; default: the run's)")
    split: Optional[str] = field(None, "evaluate the run on this split and write the report", choices=["test"])
    data_dir: Optional[str] = field(None, "where CIFAR files live (default: the run's)")
    download: bool = field(False, "download CIFAR through torchvision (needs network)")
    limit: Optional[int] = field(None, "evaluate on at most N images of the split", range=">=1")
    output: Optional[str] = field(None, "write one row per input to FILE.csv or FILE.jsonl, or to stdout "
                                        "with -", metavar="FILE")
    output_format: Optional[str] = field(None, "format of --output (default: its suffix; csv for -)",
                                         choices=["csv", "jsonl"])
    quiet: bool = field(False, "no table on stderr (failed inputs still get one line each)")
    batch_size: int = field(256, "images per forward pass", range=">=1")
    workers: int = field(0, "worker processes decoding image files (0: in this process)", range=">=0")
    resume: bool = field(False, "continue an interrupted --output FILE: keep its rows and predict only the "
                                "inputs after them (the same inputs must be given)")
    fast: str = field("fold+cl", "with --run-dir: CPU fast path, Conv+BN folding and channels_last "
                                 "(measured in benchmarks/bench_infer.py): eager | fold | fold+cl",
                      choices=["eager", "fold", "fold+cl"])
    invert: str = field("auto", "auto (digits: invert light-background images) | yes | no",
                        choices=["auto", "yes", "no"])
    device: str = field("auto", "auto | cpu | cuda | cuda:N")


@dataclass
class PolicyConfig:
    """`moskd policy`: fit RUN/policy.json on select, then write the report."""
    run_dir: Optional[str] = field(None, "run directory holding teacher/, students/ and selector/ (default: runs/digits)")
    dataset: Optional[str] = field(None, "must be the run's dataset (default: read from the run)")
    data_dir: Optional[str] = field(None, "where fashion-mnist/CIFAR files live (default: the run's)")
    download: bool = field(False, "download fashion-mnist/CIFAR (needs network)")
    limit: Optional[int] = field(None, "use at most N test images; the report then goes to RUN/report-limit<N>/, "
                                       "beside the full one", range=">=1")
    batch_size: int = field(256, "images per evaluation step", range=">=1")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    from_eval: bool = field(False, "work from RUN/eval/*.npz and meta.json without running any model")
    target: str = field("teacher", "the deployed point, chosen on select: the fewest MACs whose select accuracy "
                                   "reaches teacher | best-student | ACC (0..1]; the most accurate point when none does")
    budget_macs: Optional[float] = field(None, "instead of --target: the most accurate point using at most M MACs per "
                                               "image on select", range=">0", metavar="M")


@dataclass
class ReportConfig(PolicyConfig):
    """`moskd report`: evaluate the run and write the report (the policy step only when it has none)."""
    refit: bool = field(False, "fit the routing policy again (RUN/policy.json) instead of reporting the one the run has")


SERVING_BATCH = 32  # `moskd serve --max-batch`'s default: the batch regime `moskd export` chooses runtimes for
SERVING_GATHER = 16  # `moskd serve --gather`'s default: a backlog's window, 512 images at --max-batch 32


@dataclass
class ServeConfig:
    """`moskd serve`: an HTTP prediction server for a bundle or a run."""
    bundle: Optional[str] = field(None, "deployment bundle written by moskd export", metavar="DIR")
    run_dir: Optional[str] = field(None, "run directory (loads checkpoints and training code)", metavar="RUN")
    host: str = field("127.0.0.1", "address to listen on")
    port: int = field(8000, "TCP port (0: any free one, printed)", range="[0,65535]")
    max_batch: int = field(SERVING_BATCH, "most images in one routed batch (1 = no batching)", range=">=1")
    gather: int = field(SERVING_GATHER, "under a backlog, run up to this many batches of --max-batch images as one window: "
                           "the images the policy defers from all of them reach each later model together, in "
                           "calls of at most --max-batch (1, or --max-batch 1: one batch at a time)", range=">=1")
    max_bytes: int = field(10_000_000, "largest accepted request body", range=">=1")
    invert: str = field("auto", "auto: digits models invert light-background images", choices=["auto", "yes", "no"])
    threads: Optional[int] = field(None, "torch/onnxruntime threads (default: theirs; with --backend ray: 1 per "
                                         "replica)", range=">=1")
    backend: str = field("local", "local: this process (uvicorn); ray: Ray Serve, one deployment per model (needs "
                                  "the ray extra)", choices=["local", "ray"])
    replicas: int = field(1, "with --backend ray: replicas of each deployment", range=">=1")


INT8_CALIB = 1000  # train images an int8 model is calibrated on by default (or all, if fewer)
INT8_BOUND = 0.3  # points of `select` accuracy an int8 (or bf16) model may lose against its fp32 file
INT8_MIN_SPEEDUP = 1.0  # --quantize int8: an int8 model must be faster than this times its fp32 file


@dataclass
class ExportConfig:
    """`moskd export`: a finished run as a deployment bundle (inference.export)."""
    run_dir: Optional[str] = field(None, "finished run (selector/, students/, teacher/)")
    out: Optional[str] = field(None, "bundle folder to write (must be empty or absent, or pass --force)")
    runtime: Optional[str] = field(None, "run each ONNX model under onnxruntime, OpenVINO, or (auto) whichever is "
                                         "fastest on this host within --int8-bound points on select "
                                         "(inference/tune.py); writes ONNX", choices=["auto", "ort", "openvino"])
    precision: Optional[str] = field(None, "precisions to choose among (auto: every one this host runs natively; bf16 "
                                           "only under OpenVINO on a CPU with avx512_bf16/amx_bf16); writes ONNX, "
                                           "keeps fp32 and int8 files", choices=["auto", "fp32", "bf16", "int8"])
    retune: Optional[str] = field(None, "re-time the runtime choice of a bundle exported with --runtime/--precision "
                                        "on this host, without the run: the accuracy verdicts and thresholds recorded "
                                        "at export stand", metavar="BUNDLE")
    format: Optional[str] = field(None, "torch.export programs (.pt2) or ONNX (.onnx, needs onnx and onnxscript) "
                                        "(default: torch; onnx with --quantize)", choices=["torch", "onnx"])
    fast: str = field("fold", "fold Conv+BN pairs into the exported programs (a model whose folded outputs differ by "
                              "more than 1e-4 of the output scale is exported unfolded)", choices=["fold", "eager"])
    force: bool = field(False, "replace an existing bundle in --out")
    quantize: Optional[str] = field(None, "static int8 quantization of every ONNX model (inference/quantize.py); a "
                                          "model that int8 makes slower or less accurate than --int8-bound stays "
                                          "fp32, said in the manifest", choices=["int8"])
    calib: Optional[str] = field(None, f"train images to calibrate --quantize on (default: {INT8_CALIB}, or all if "
                                       f"fewer)", metavar="N")
    int8_bound: float = field(INT8_BOUND, "most `select` accuracy points an int8 model may lose against its fp32 file",
                              range=">=0", metavar="POINTS")
    int8_min_speedup: float = field(INT8_MIN_SPEEDUP, "an int8 model must run faster than X times its fp32 file "
                                                      "(batch 64, 2 threads)", range=">=0", metavar="X")
    report: bool = field(False, "with --quantize int8: also write int8_report.{json,md} and int8_eval_{select,test}.npz "
                                "into the bundle: each model and the routed system, int8 against fp32, on select and "
                                "test (paired CIs), bytes, and latency at batch 1 and 64 side by side")
