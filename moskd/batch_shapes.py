"""Power-of-two batches: a batch of any size run as consecutive chunks whose sizes are distinct powers
of two, its binary decomposition (37 images = 32 + 4 + 1), so a model fed every size up to 2^k only
ever sees k + 1 batch shapes.

Why: the routed sub-batches of a streamed prediction change size with every batch (each image goes to
the model the policy picks). On the CPU each new shape costs oneDNN primitives (its cache holds 1,024)
and leaves differently sized holes in glibc's heap that later tensors do not fit, so a process that
has seen every size keeps growing with the number of batches (benchmarks/bench_predictor_rss.py). A
model in eval mode answers each image from that image alone, so chunking changes no decision; a
backend may still pick another kernel for another batch size, which moves the last bits of a logit
(as the sub-batch size already does).

Standard library and numpy only: the deployment bundle (inference/bundle.py) imports it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def power_of_two_slices(n: int) -> list[slice]:
    """Consecutive slices covering range(n), of distinct power-of-two lengths, largest first."""
    out, start = [], 0
    for bit in reversed(range(n.bit_length())):
        if n >> bit & 1:
            out.append(slice(start, start + (1 << bit)))
            start += 1 << bit
    return out


def in_power_of_two_batches(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`run` (a batch in, one output row per image out) applied chunk by chunk, outputs in input order."""

    def chunked(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return run(x)
        return np.concatenate([run(x[s]) for s in power_of_two_slices(len(x))])

    return chunked
