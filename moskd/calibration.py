"""Expected calibration error: one definition for the report (inference.curves) and for the check of
an imported teacher (students.teacher_check)."""
from __future__ import annotations

import numpy as np

from moskd.policy import softmax


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
