"""Accuracy-vs-MACs curves, operating points, calibration and paired bootstrap CIs.

Pure functions of per-image numpy arrays (one row per image, as RUN/eval/<split>.npz holds them):
everything report.json says about routing comes from here, so every number can be recomputed from
the saved arrays without running a model.

Systems compared (DESIGN.md, report.json `curves`):
  router   the selector's scores charged `knob` x relative MACs (selector.model.route_from_scores),
           swept from all-dearest to all-cheapest; its MACs include the selector's.
  cascade  "a>b": run a on every image, and b on those whose max softmax from a is below the
           threshold, answering with b there ("a>b>c" goes on to c the same way, one threshold for
           both steps). Threshold 0 never escalates; a threshold above 1 always does.
  random   a router that ignores the image and sends a share of images to each student.
"""
from __future__ import annotations

import numpy as np
import torch

from inference.bundle import softmax
from selector.model import knob_grid, relative_costs, route_from_scores

ALWAYS = 1.001  # a cascade threshold above any max softmax: always escalate
BOOTSTRAP = 2000  # paired bootstrap resamples for a 95% CI


def max_softmax(logits: np.ndarray) -> np.ndarray:
    return softmax(logits).max(1)


# ---------------------------------------------------------------- per model


def ece(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the max-softmax confidence, `bins` equal-width bins on (0, 1]."""
    p = softmax(logits)
    conf, right = p.max(1), p.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins
    total = 0.0
    for b in range(bins):
        inb = which == b
        if inb.any():
            total += inb.mean() * abs(right[inb].mean() - conf[inb].mean())
    return float(total)


def confusion(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) counts."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    return [float((preds[labels == c] == c).mean()) if (labels == c).any() else None for c in range(num_classes)]


# ---------------------------------------------------------------- cascades


def cascade_thresholds(confidence: np.ndarray) -> list[float]:
    """0 (never escalate), an even 0.05 grid, the 2.5%..97.5% quantiles of the first model's
    confidence (max softmax crowds near 1, where an even grid jumps), and ALWAYS."""
    qs = np.quantile(confidence, np.linspace(0.025, 0.975, 39)) if len(confidence) else []
    return sorted({0.0, ALWAYS, *np.round(np.linspace(0.05, 1.0, 20), 4).tolist(),
                   *[round(float(q), 6) for q in qs]})


def cascade_answer(preds: list[np.ndarray], confs: list[np.ndarray], macs: list[float], threshold: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, MACs spent) per image for the cascade preds[0] > preds[1] > ...: model k answers
    when its max softmax >= threshold, else the image goes on; the last model always answers."""
    n = len(preds[0])
    pred = np.empty(n, dtype=preds[0].dtype)
    cost = np.zeros(n)
    pending = np.ones(n, dtype=bool)
    for k, (p, c, m) in enumerate(zip(preds, confs, macs)):
        cost[pending] += m
        answer = pending if k == len(preds) - 1 else pending & (c >= threshold)
        pred[answer] = p[answer]
        pending &= ~answer
    return pred, cost


def cascade_curve(preds, confs, macs, labels, thresholds) -> list[dict]:
    curve = []
    for t in thresholds:
        pred, cost = cascade_answer(preds, confs, macs, t)
        curve.append({"threshold": float(t), "accuracy": float((pred == labels).mean()),
                      "macs_per_image": float(cost.mean())})
    return curve


# ---------------------------------------------------------------- router and random routing


def routes_at(scores: np.ndarray, knob: float, tie_margin: float, costs: np.ndarray) -> np.ndarray:
    """The router's student per image at `knob` (the same rule as inference.router.Router)."""
    return route_from_scores(torch.from_numpy(scores).float(), tie_margin, knob,
                             torch.from_numpy(np.asarray(costs, dtype=np.float32))).numpy()


def router_curve(scores: np.ndarray, student_preds: np.ndarray, labels: np.ndarray, student_macs: list[float],
                 selector_macs: float, tie_margin: float, names: list[str]) -> list[dict]:
    """The knob swept from all-dearest to all-cheapest; MACs include the selector's."""
    m = np.asarray(student_macs, dtype=np.float64)
    costs = relative_costs(student_macs).numpy()
    grid = knob_grid(torch.from_numpy(scores).float(), torch.from_numpy(costs).float(), tie_margin)
    curve = []
    for knob in grid:
        route = routes_at(scores, knob, tie_margin, costs)
        pred = student_preds[np.arange(len(route)), route]
        curve.append({"knob": float(knob), "accuracy": float((pred == labels).mean()),
                      "macs_per_image": float(selector_macs + m[route].mean()),
                      "share": {n: float((route == i).mean()) for i, n in enumerate(names)}})
    return curve


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


def iso_accuracy(points: list[dict], target: float) -> float | None:
    """Fewest MACs per image among curve points reaching `target` accuracy (None: none does)."""
    reach = [p["macs_per_image"] for p in points if p["accuracy"] >= target - 1e-12]
    return float(min(reach)) if reach else None


# ---------------------------------------------------------------- choosing on `select`


def best_under_budget(curve: list[dict], budget: float) -> dict | None:
    """The most accurate point of `curve` whose MACs per image stay within `budget` (ties: fewer MACs)."""
    ok = [p for p in curve if p["macs_per_image"] <= budget + 1e-6]
    return max(ok, key=lambda p: (p["accuracy"], -p["macs_per_image"])) if ok else None


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
