"""Calibration, random routing and paired bootstrap CIs: pure functions of per-image numpy arrays
(one row per image, as RUN/eval/<split>.npz holds them). Routing systems are moskd.policy.Policy
objects replayed on the same arrays (inference.summary), never a rule spelled here.

"""
from __future__ import annotations

import numpy as np

from moskd.calibration import ece  # noqa: F401 (the report's summary reads it as curves.ece)
from moskd.policy import softmax

BOOTSTRAP = 2000  # paired bootstrap resamples for a 95% CI


def max_softmax(logits: np.ndarray) -> np.ndarray:
    return softmax(logits).max(1)


# ---------------------------------------------------------------- per model


def confusion(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) counts."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    return [float((preds[labels == c] == c).mean()) if (labels == c).any() else None for c in range(num_classes)]


# ---------------------------------------------------------------- random routing


def random_curve(correct: np.ndarray, student_macs: list[float], names: list[str], steps: int = 10) -> list[dict]:
    """Expected accuracy of sending a share p of images to the dearest student and the rest to the
    cheapest, at random, p = 0, 1/steps, ..., 1 (no selector runs, so no selector MACs)."""
    acc = correct.mean(0)
    cheap, dear = 0, len(names) - 1
    curve = []
    for p in np.linspace(0, 1, steps + 1):
        share = {n: 0.0 for n in names}
        share[names[cheap]] += 1 - p
        share[names[dear]] += p
        curve.append({"share": {k: float(v) for k, v in share.items()},
                      "accuracy": float((1 - p) * acc[cheap] + p * acc[dear]),
                      "macs_per_image": float((1 - p) * student_macs[cheap] + p * student_macs[dear])})
    return curve


# ---------------------------------------------------------------- uncertainty


def paired_bootstrap(diff: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """95% percentile interval of mean(diff) over images resampled with replacement (paired: both
    systems are scored on the same resampled images)."""
    diff = np.asarray(diff, dtype=np.float64)
    n = len(diff)
    if n == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bound memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        means[start:start + k] = diff[rng.integers(0, n, size=(k, n))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]
