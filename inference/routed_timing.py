"""What a routed system costs per batch, timed the way it serves: the deployment report
(inference/deploy_report.py), the int8 report (inference/int8_report.py) and
benchmarks/bench_runtime.py share these calls.

A routed batch's cost depends on how many of its images the policy defers, so one batch says little:
the first 64 Fashion-MNIST test images defer 3 images to DenseNet121 and 1 to the teacher, against
1.3 and 0.4 on average. A call here runs ROUTED_IMAGES test images (more if a gathered window needs
them; repeated if the test set has fewer) batch by batch, and the time per batch is the call's over
the number of batches.

Two ways to serve those batches:
  one_at_a_time  each batch routed alone (moskd serve without a backlog, or --gather 1): a deferred
                 model runs the 1-4 images its batch defers, at a fixed cost of milliseconds a call;
  gathered       `gather` batches routed as one window with every model call capped at the batch
                 size (moskd serve --gather under a backlog): the first model runs the same calls,
                 the deferred images of the whole window reach each later model together.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

ROUTED_IMAGES = 512  # test images per timed call at a serving batch: 8 batches of 64
SMALL_CALL_IMAGES = 64  # at batches under 16, images per call (batch 1: 64 single-image calls)


def routed_sample(images: np.ndarray, bs: int, at_least: int = 0) -> np.ndarray:
    """The run's first test images, whole batches of them: ROUTED_IMAGES at a serving batch (or
    `at_least`, a gathered window's images, if more), SMALL_CALL_IMAGES below it; a test set with
    fewer images is repeated, so the share of deferred images stays the test set's."""
    want = max(ROUTED_IMAGES, at_least) if bs >= 16 else SMALL_CALL_IMAGES
    n = max(1, want // bs) * bs
    return np.ascontiguousarray(np.resize(images, (n, *images.shape[1:])))


def cycling(bundle, u8: np.ndarray) -> Callable[[], None]:
    """A call that routes the next image of `u8` alone (round and round): single-image latencies over
    many images, for a p50 that is not one image's."""
    state = {"i": 0}

    def call():
        i = state["i"] = (state["i"] + 1) % len(u8)
        bundle.run(u8[i:i + 1])

    return call


def one_at_a_time(bundle, u8: np.ndarray, bs: int) -> tuple[Callable[[], None], int]:
    """(call, batches per call): every batch of `u8` routed alone."""
    return (lambda: [bundle.run(u8[i:i + bs]) for i in range(0, len(u8), bs)]), len(u8) // bs


def gathered(capped_bundle, u8: np.ndarray, bs: int, gather: int) -> tuple[Callable[[], None], int]:
    """(call, batches per call): windows of `gather` batches, on a bundle loaded with max_call=bs."""
    if capped_bundle.max_call != bs:
        raise ValueError(f"a gathered window needs a bundle whose calls are capped at {bs} images (max_call)")
    w = bs * gather
    return (lambda: [capped_bundle.run(u8[i:i + w]) for i in range(0, len(u8), w)]), len(u8) // bs
