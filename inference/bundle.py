"""The deployment bundle's host runtime: manifest.json + one exported program per model.

    from inference.bundle import load_bundle
    bundle = load_bundle("bundle/")            # torch.export programs (.pt2) or ONNX (.onnx)
    out = bundle.run(uint8_batch)              # (N, C, H, W) uint8 -> logits, routes, scores, macs

Written by `moskd export`. This module imports only the standard library, numpy, PIL (through
inference.images) and the backend the bundle needs: torch for `.pt2` programs, onnxruntime for
`.onnx` files. It never imports moskd's training code, the stages, timm or torchvision, so a
bundle runs where only those are installed; tests/test_export.py checks that in a fresh process.

Routing is selector.model.route_from_scores, re-implemented in numpy (tests/test_export.py checks
the two agree): each score is charged knob x the student's relative MACs, the best charged score wins, students within `tie_margin` of the best tie and the cheapest
of them (students are in ascending-MAC order) takes the image; with `escalate` set, an image whose
best score is below it goes to the teacher instead. Each route's images run as one sub-batch on
that model only, and outputs come back in input order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TEACHER = "teacher"


class BundleError(Exception):
    """A missing or inconsistent bundle; the message names the file and the fix."""


def route_scores(scores: np.ndarray, tie_margin: float, escalate: float | None = None, knob: float = 0.0,
                 costs: np.ndarray | None = None) -> np.ndarray:
    """(N, S) scores in route order -> (N,) routes; route S means the teacher (escalated). Each score is
    first charged knob x the student's MACs relative to the dearest (costs)."""
    scores = np.asarray(scores, dtype=np.float32)
    charged = scores
    if knob and costs is not None:  # float32 throughout, like the torch rule, so ties agree
        charged = scores - np.float32(knob) * np.asarray(costs, dtype=np.float32)
    best = charged.max(axis=1, keepdims=True)
    near = charged >= best - np.float32(tie_margin)
    route = near.argmax(axis=1).astype(np.int64)  # first True = the cheapest near-best student
    if escalate is not None:
        route[scores.max(axis=1) < np.float32(escalate)] = scores.shape[1]
    return route


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the one softmax of the reports, the bundle and the server)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class BundleOutput:
    logits: np.ndarray  # (N, classes) float32, of the model each image was routed to
    routes: np.ndarray  # (N,) index into Bundle.route_names
    scores: np.ndarray  # (N, students) selector scores in [0, 1]
    macs: np.ndarray  # (N,) MACs spent on each image: selector + the model that answered


class _TorchProgram:
    def __init__(self, path: Path):
        import torch

        self.torch = torch
        self.module = torch.export.load(str(path)).module()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(x)).float().numpy()


class _OnnxProgram:
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0].astype(np.float32, copy=False)


class Bundle:
    """A loaded bundle: preprocessing card, class names, one program per model, the routing rule."""

    def __init__(self, root: str | Path, threads: int | None = None):
        self.root = Path(root)
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
        self.names = [s["name"] for s in m["students"]]
        self.teacher_entry = m.get("teacher")
        self.route_names = self.names + [TEACHER]
        self.tie_margin = float(m["routing"]["tie_margin"])
        self.knob = float(m["routing"].get("knob", 0.0))  # bundles from before the cost knob: 0
        self.costs = m["routing"].get("costs")
        esc = m["routing"].get("escalate")
        self.escalate = None if esc is None else float(esc)
        if self.escalate is not None and self.teacher_entry is None:
            raise BundleError(f"{path}: escalates to the teacher but holds no teacher; export the bundle again")
        self.selector = self._load(m["selector"], threads)
        self.students = [self._load(s, threads) for s in m["students"]]
        self.teacher = self._load(self.teacher_entry, threads) if self.teacher_entry else None
        self.route_macs = np.array([s["macs"] for s in m["students"]]
                                   + [self.teacher_entry["macs"] if self.teacher_entry else 0], dtype=np.int64)
        self.selector_macs = int(m["selector"]["macs"])
        c = len(m["mean"])
        self._mean = np.asarray(m["mean"], dtype=np.float32).reshape(1, c, 1, 1)
        self._std = np.asarray(m["std"], dtype=np.float32).reshape(1, c, 1, 1)

    def _load(self, entry: dict, threads: int | None):
        path = self.root / entry["file"]
        if not path.is_file():
            raise BundleError(f"{path} not found; the bundle is incomplete, export it again")
        try:
            return _OnnxProgram(path, threads) if path.suffix == ".onnx" else _TorchProgram(path)
        except ImportError as e:
            need = "onnxruntime" if path.suffix == ".onnx" else "torch"
            raise BundleError(f"{path}: needs {need} ({e}); pip install {need}") from None
        except Exception as e:  # noqa: BLE001  a damaged program file: name it, whatever the backend raised
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise BundleError(f"{path}: cannot load ({first}); export the bundle again") from None

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 -> float32, as moskd.data.normalize does it."""
        return (x.astype(np.float32) / np.float32(255) - self._mean) / self._std

    def _models(self) -> list:
        return [*self.students, *([self.teacher] if self.teacher is not None else [])]

    def run(self, images: np.ndarray) -> BundleOutput:
        """Routed predictions for a (N, C, H, W) uint8 batch."""
        x = np.ascontiguousarray(self.normalize(np.asarray(images)))
        scores = self.selector(x)
        routes = route_scores(scores, self.tie_margin, self.escalate, self.knob, self.costs)
        logits = np.empty((len(x), len(self.class_names)), dtype=np.float32)
        for r, model in enumerate(self._models()):
            idx = np.flatnonzero(routes == r)
            if idx.size:  # a route nobody took costs nothing
                logits[idx] = model(np.ascontiguousarray(x[idx]))
        return BundleOutput(logits, routes, scores, self.selector_macs + self.route_macs[routes])

    def info(self) -> dict:
        """What GET /info and the CLI show: classes, models, MACs, the operating point."""
        m = self.manifest
        models = {"selector": m["selector"], **{s["name"]: s for s in m["students"]}}
        if self.teacher_entry:
            models[TEACHER] = self.teacher_entry
        return {"format": self.format, "dataset": m["dataset"], "classes": self.class_names,
                "input_size": m["input_size"], "models": models, "routing": m["routing"],
                "source": m.get("source")}


def load_bundle(root: str | Path, threads: int | None = None) -> Bundle:
    return Bundle(root, threads)
