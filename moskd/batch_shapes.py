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

Calls of at most N images (`most`): a batching server that gathers the images a policy defers over
several batches (moskd serve --gather) hands each model every deferred image of the window at once,
in calls no larger than the serving batch, so no model runs a batch bigger than the one it was chosen
for.

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


def call_slices(n: int, pow2: bool = False, most: int | None = None) -> list[slice]:
    """Consecutive slices covering range(n): chunks of at most `most` images (None: one chunk), each
    cut into its power-of-two parts when pow2."""
    step = max(1, n if most is None else int(most))
    out = []
    for start in range(0, n, step):
        size = min(step, n - start)
        parts = power_of_two_slices(size) if pow2 else [slice(0, size)]
        out += [slice(start + s.start, start + s.stop) for s in parts]
    return out


def in_calls(run: Callable[[np.ndarray], np.ndarray], pow2: bool = False,
             most: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """`run` (a batch in, one output row per image out) applied call by call (call_slices), outputs in
    input order; `run` itself when every batch runs whole."""
    if not pow2 and most is None:
        return run

    def chunked(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return run(x)
        return np.concatenate([run(x[s]) for s in call_slices(len(x), pow2, most)])

    return chunked
