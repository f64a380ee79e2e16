"""The deployment bundle's host runtime: manifest.json + one exported program per model.

    from inference.bundle import load_bundle
    bundle = load_bundle("bundle/")            # torch.export programs (.pt2) or ONNX (.onnx)
    out = bundle.run(uint8_batch)              # (N, C, H, W) uint8 -> answers, routes, scores, macs

Written by `moskd export`. This module imports only the standard library, numpy, PIL (through
inference.images), moskd.policy and moskd.batch_shapes (numpy only) and the backend the bundle needs: torch for `.pt2`
programs, onnxruntime for `.onnx` files. It never imports moskd's training code, the stages, timm
or torchvision, so a bundle runs where only those are installed; tests/test_export.py checks that
in a fresh process. Each ONNX model runs in the (runtime, precision) the manifest names
(inference/runtimes.py: onnxruntime or OpenVINO; fp32, bf16 or int8), chosen at export by measurement;
where the manifest names openvino and this host lacks it, the model runs under onnxruntime and the
bundle says so in one warning line on stderr.

The routing decision is the run's policy, copied verbatim into the manifest under "policy" and run
by moskd.policy.decide, the code the report replays and the run's router executes: each model runs
only on the sub-batch of images whose chain reaches it, and outputs come back in input order.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moskd.batch_shapes import in_calls
from moskd.policy import Policy, PolicyError, decide

MANIFEST = "manifest.json"
FORMAT_VERSION = 2


class BundleError(Exception):
    """A missing or inconsistent bundle; the message names the file and the fix."""


@dataclass
class BundleOutput:
    logits: np.ndarray  # (N, classes) float32 log-probabilities of the answer (softmax gives its probabilities)
    routes: np.ndarray  # (N,) index into route_names of the model that answered last
    scores: np.ndarray  # (N, students) selector scores in [0, 1] (zeros when the policy does not read them)
    macs: np.ndarray  # (N,) MACs spent on each image, the selector's included
    models: np.ndarray | None = None  # (N,) bit mask of the models that ran (bit k = route_names[k])


def answer_logits(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities of an answer: softmax of them gives the answer's probabilities back."""
    return np.log(np.clip(probs, 1e-30, None)).astype(np.float32)


class _TorchProgram:
    def __init__(self, path: Path):
        import torch

        self.torch = torch
        self.module = torch.export.load(str(path)).module()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(x)).float().numpy()


def entry_files(entry: dict) -> dict:
    """precision -> file of one manifest entry: "files" where the export kept both (runtime choice),
    else the one file in its recorded precision (older and --quantize bundles)."""
    return dict(entry.get("files") or {entry.get("precision", "fp32"): entry["file"]})


class _RegimeProgram:
    """Two choices of one model: sub-batches of at most `up_to` images run `small` (the batch-1
    choice), larger ones `large` (the serving batch's)."""

    def __init__(self, large, small, up_to: int):
        self.large, self.small, self.up_to = large, small, up_to

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (self.small if len(x) <= self.up_to else self.large)(x)


class Bundle:
    """A loaded bundle: preprocessing card, class names, one program per model, the routing policy."""

    def __init__(self, root: str | Path, threads: int | None = None, force: str | None = None,
                 pow2_batches: bool = False, max_call: int | None = None):
        """force: "RUNTIME/PRECISION" runs every ONNX model so (e.g. "onnxruntime/fp32", the baseline
        the deployment report compares with) instead of the manifest's choice; a model with no file in
        that precision (int8 not kept) runs its fp32 file in that runtime. pow2_batches: each program
        runs its batch in power-of-two chunks (moskd.batch_shapes); the batch regime (small_batch) is
        still chosen on the whole sub-batch. max_call: no program runs more than this many images at
        once (a server gathering deferred images over several batches: moskd serve --gather)."""
        self.root = Path(root)
        self.force = force
        self.pow2_batches, self.max_call = pow2_batches, max_call
        self.fallbacks: list[tuple[str, str]] = []  # (model, why) run under onnxruntime instead of openvino
        path = self.root / MANIFEST
        if not path.is_file():
            raise BundleError(f"{path} not found; write a bundle with moskd export --run-dir RUN --out {self.root}")
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{path}: not a readable manifest ({e}); export the bundle again") from None
        if not isinstance(m, dict) or m.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: not a version-{FORMAT_VERSION} moskd bundle manifest; export the bundle again")
        self.manifest = m
        self.format = m["format"]
        self.card = {k: m[k] for k in ("dataset", "input_size", "mean", "std", "class_names")}
        self.class_names = list(m["class_names"])
        try:
            self.policy = Policy.from_dict(m["policy"])
        except (KeyError, PolicyError) as e:
            raise BundleError(f"{path}: no runnable routing policy ({e}); export the bundle again") from None
        self.route_names = list(self.policy.models)
        self.names = list(m["students"])  # the selector's students, in route order
        self.selector = self._load(m["selector"], threads) if self.policy.selector else None
        self.selector_macs = int(self.policy.selector_macs)
        entries = {e["name"]: e for e in m["models"]}
        self.programs = []
        for k, name in enumerate(self.route_names):
            if k in self.policy.used() and name not in entries:
                raise BundleError(f"{path}: the policy runs {name}, which the bundle does not hold; export it again")
            self.programs.append(self._load(entries[name], threads) if name in entries else None)
        c = len(m["mean"])
        self._mean = np.asarray(m["mean"], dtype=np.float32).reshape(1, c, 1, 1)
        self._std = np.asarray(m["std"], dtype=np.float32).reshape(1, c, 1, 1)
        if self.fallbacks:  # one line for the whole bundle, whatever the number of models
            print(f"moskd bundle: warning: running {', '.join(n for n, _ in self.fallbacks)} under onnxruntime "
                  f"instead of openvino ({self.fallbacks[0][1]})", file=sys.stderr)

    def _load(self, entry: dict, threads: int | None):
        path = self.root / entry["file"]
        if not path.is_file():
            raise BundleError(f"{path} not found; the bundle is incomplete, export it again")
        try:  # calls of at most max_call images, each in the batch regime its own size picks
            program = self._onnx(entry, threads) if path.suffix == ".onnx" else self._chunked(_TorchProgram(path))
            return in_calls(program, most=self.max_call)
        except BundleError:
            raise
        except ImportError as e:
            need = "onnxruntime" if path.suffix == ".onnx" else "torch"
            raise BundleError(f"{path}: needs {need} ({e}); pip install {need}") from None
        except Exception as e:  # noqa: BLE001  a damaged program file: name it, whatever the backend raised
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise BundleError(f"{path}: cannot load ({first}); export the bundle again") from None

    def _onnx(self, entry: dict, threads: int | None):
        """The model's program in the manifest's (runtime, precision), or `force`'s; its batch-1 choice
        beside it when that differs."""
        from inference.runtimes import ORT

        if self.force:  # a model without a file in the forced precision runs its fp32 file, same runtime
            rt, pr = self.force.split("/")
            return self._open(entry, rt, pr if pr == "bf16" or pr in entry_files(entry) else "fp32", threads)
        large = self._open(entry, entry.get("runtime", ORT), entry.get("precision", "fp32"), threads)
        small = entry.get("small_batch")
        if not small or (small["runtime"], small["precision"]) == (entry.get("runtime", ORT), entry.get("precision")):
            return large
        return _RegimeProgram(large, self._open(entry, small["runtime"], small["precision"], threads),
                              int(small["up_to"]))

    def _open(self, entry: dict, runtime: str, precision: str, threads: int | None):
        from inference.runtimes import ORT, RuntimeUnavailable, open_program

        files = entry_files(entry)
        file = files.get("fp32" if precision == "bf16" else precision)
        if file is None:
            raise BundleError(f"{self.root / MANIFEST}: {entry.get('name', 'selector')} has no {precision} file "
                              f"(it holds {', '.join(files)}); export the bundle again")
        if not (self.root / file).is_file():
            raise BundleError(f"{self.root / file} not found; the bundle is incomplete, export it again")
        try:
            return self._chunked(open_program(self.root / file, runtime, precision, threads))
        except RuntimeUnavailable as e:
            if runtime == ORT:
                raise BundleError(f"{self.root / file}: {e}; export the bundle again") from None
            self.fallbacks.append((entry.get("name", "selector"), str(e)))
            bf = "fp32" if precision == "bf16" else precision
            return self._chunked(open_program(self.root / files[bf], ORT, bf, threads))

    def _chunked(self, program):
        """One program as this bundle runs it: whole batches, or power-of-two chunks (pow2_batches)."""
        return in_calls(program, pow2=self.pow2_batches)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 -> float32, as moskd.data.normalize does it."""
        return (x.astype(np.float32) / np.float32(255) - self._mean) / self._std

    def run(self, images: np.ndarray) -> BundleOutput:
        """The policy's answers for a (N, C, H, W) uint8 batch."""
        x = np.ascontiguousarray(self.normalize(np.asarray(images)))
        scores = (self.selector(x) if self.selector is not None
                  else np.zeros((len(x), len(self.names)), dtype=np.float32))
        d = decide(self.policy, len(x), lambda k, idx: self.programs[k](np.ascontiguousarray(x[idx])), scores)
        probs = d.probs if len(x) else np.zeros((0, len(self.class_names)))
        return BundleOutput(answer_logits(probs), d.route, scores, d.macs, d.models)

    def info(self) -> dict:
        """What GET /info and the CLI show: classes, models, MACs, the routing policy."""
        m = self.manifest
        models = {e["name"]: e for e in m["models"]}
        if m.get("selector"):
            models["selector"] = m["selector"]
        return {"format": self.format, "dataset": m["dataset"], "classes": self.class_names,
                "input_size": m["input_size"], "models": models, "policy": m["policy"],
                "routing": self.policy.describe(), "source": m.get("source")}


def load_bundle(root: str | Path, threads: int | None = None, force: str | None = None,
                pow2_batches: bool = False, max_call: int | None = None) -> Bundle:
    return Bundle(root, threads, force, pow2_batches, max_call)
