"""Image files to prediction rows, streamed: inputs are listed lazily (folders walked in sorted order),
decoded in chunks of a batch by DataLoader workers (--workers; 0 decodes in this process), predicted
in input order and handed on chunk by chunk, so memory stays flat in the number of files and rows
can be written as they are predicted.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from inference.images import BadImage, image_extensions, read_image_array
from inference.output import failed_row, prediction_row
from moskd.policy import softmax


def iter_inputs(inputs: list[str]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each file to predict and (path, why) for an input that cannot even be listed
    (an unreadable folder, a folder without images), in input order; folders sorted recursively."""
    exts = image_extensions()
    for raw in inputs:
        p = Path(raw)
        if not p.is_dir():
            yield p, None  # named explicitly: always tried, so a bad one is reported, not skipped
            continue
        found = False
        failures: list[tuple[Path, str]] = []

        def unreadable(err: OSError, root=p):
            failures.append((Path(err.filename or root), f"cannot list folder ({err.strerror or err})"))

        for d, dirs, names in os.walk(p, onerror=unreadable):
            dirs.sort()
            yield from failures
            found, failures[:] = found or bool(failures), []
            for n in sorted(names):
                if Path(n).suffix.lower() in exts:
                    found = True
                    yield Path(d) / n, None
        yield from failures
        if not found and not failures:
            yield p, f"no image files found (looked for {', '.join(sorted(exts)[:6])}, ...)"


def decode_chunk(chunk: list[tuple[Path, str | None]], card: dict, invert: str) -> dict:
    """One chunk of inputs read as the card expects: the arrays of those that decode, why the others failed."""
    arrays, ok, errors = [], [], {}
    for i, (path, why) in enumerate(chunk):
        if why is not None:
            errors[i] = why
            continue
        try:
            arrays.append(read_image_array(path, card, invert))
            ok.append(i)
        except BadImage as e:
            errors[i] = str(e)
    return {"paths": [p for p, _ in chunk], "x": np.stack(arrays) if arrays else None, "ok": ok, "errors": errors}


class DecodedChunks(IterableDataset):
    """The inputs after the first `skip`, in chunks of batch_size; worker k of W decodes chunks k, k+W, ...
    (a DataLoader takes from its workers in turn, so the chunks come back in input order)."""

    def __init__(self, inputs: list[str], batch_size: int, card: dict, invert: str, skip: int = 0):
        self.inputs, self.batch_size, self.card, self.invert, self.skip = inputs, batch_size, card, invert, skip

    def __iter__(self):
        info = get_worker_info()
        k, w = (info.id, info.num_workers) if info is not None else (0, 1)
        items = itertools.islice(iter_inputs(self.inputs), self.skip, None)
        for c, chunk in enumerate(iter(lambda: list(itertools.islice(items, self.batch_size)), [])):
            if c % w == k:
                yield decode_chunk(chunk, self.card, self.invert)


def _same(x):
    return x


def decoded_chunks(inputs: list[str], batch_size: int, card: dict, invert: str, workers: int = 0, skip: int = 0):
    return DataLoader(DecodedChunks(inputs, batch_size, card, invert, skip), batch_size=None, num_workers=workers,
                      collate_fn=_same)


def predict_chunk(predictor, chunk: dict) -> list[dict]:
    """The rows of one decoded chunk, in its order: a prediction or a failed row with its error."""

    rows: list[dict | None] = [None] * len(chunk["paths"])
    for i, why in chunk["errors"].items():
        rows[i] = failed_row(chunk["paths"][i], why)
    if chunk["x"] is not None:
        out = predictor.run(chunk["x"])
        probs = softmax(out.logits.astype(np.float64))
        cls, conf = probs.argmax(1), probs.max(1)
        for j, i in enumerate(chunk["ok"]):
            rows[i] = prediction_row(
                chunk["paths"][i], int(cls[j]), predictor.class_names[int(cls[j])], float(conf[j]),
                predictor.route_names[int(out.routes[j])],
                {n: float(s) for n, s in zip(predictor.names, out.scores[j].tolist())})
    return rows  # type: ignore[return-value]


def nth_input(inputs: list[str], n: int) -> Path | None:
    """The path of input n (0-based) as iter_inputs lists it; None when there are fewer."""
    return next((p for p, _ in itertools.islice(iter_inputs(inputs), n, n + 1)), None)
