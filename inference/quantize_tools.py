"""What inference/quantize.py measures with: onnxruntime sessions at a fixed thread count, their
outputs over a split, side-by-side timing, the calibration data reader and the run's splits."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from inference.bundle import Bundle
from moskd.ort import ort_session

CALIB_BATCH = 32
SPEED_THREADS = 2


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """(N, C, H, W) uint8 -> float32 through Bundle.normalize itself, so calibration and scoring see
    exactly what the bundle feeds its models."""
    c = len(mean)
    card = SimpleNamespace(_mean=np.asarray(mean, dtype=np.float32).reshape(1, c, 1, 1),
                           _std=np.asarray(std, dtype=np.float32).reshape(1, c, 1, 1))
    return np.ascontiguousarray(Bundle.normalize(card, np.asarray(images)))


def run_splits(run) -> dict:
    """The run's own train/select/test splits (uint8 images, int labels), from its recorded config."""
    from inference.report import _data_settings  # the split settings the run was trained with
    from moskd.data import load_data

    data = load_data(**_data_settings(run, None, None, False, None))
    return {k: (s.images.numpy(), s.targets.numpy()) for k, s in data.splits.items()}


class CalibReader:
    """onnxruntime CalibrationDataReader over the first N train images, CALIB_BATCH at a time. It has
    len() and set_range() so quantize_static feeds it one batch per collect (CalibStridedMinMax=1):
    the calibrators then merge ranges/histograms batch by batch instead of holding every activation
    of every image at once."""

    def __init__(self, x: np.ndarray, input_name: str):
        self.batches = [x[i:i + CALIB_BATCH] for i in range(0, len(x), CALIB_BATCH)]
        self.name = input_name
        self.set_range(0, len(self.batches))

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int):
        self._iter = iter(self.batches[start_index:end_index])

    def get_next(self):
        b = next(self._iter, None)
        return None if b is None else {self.name: b}

    def rewind(self):
        self.set_range(0, len(self.batches))


def session(path: Path, threads: int = SPEED_THREADS):
    return ort_session(path, threads)  # the bundle's own session settings: what is measured is what ships


def outputs(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
                          ).astype(np.float32)


def side_by_side(calls: dict, rounds: int = 5, min_s: float = 0.2, per_round: bool = False) -> dict:
    """Median seconds per call of each zero-argument callable, timed in the same rounds, a fresh
    shuffled order each round (so load from other processes falls on all of them alike); with
    `per_round`, each round's seconds instead (lists in round order, for paired ratios)."""
    rng = np.random.default_rng(0)
    for f in calls.values():  # warm-up: first-run allocations and kernel choices
        f()
    times: dict = {k: [] for k in calls}
    keys = list(calls)
    for _ in range(rounds):
        for i in rng.permutation(len(keys)):
            k = keys[i]
            f, n, t0 = calls[k], 0, time.perf_counter()
            while True:
                f()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= min_s:
                    break
            times[k].append(dt / n)
    return times if per_round else {k: statistics.median(v) for k, v in times.items()}


def _call(sess, x: np.ndarray):
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)
