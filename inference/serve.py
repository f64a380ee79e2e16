"""`moskd serve`: an HTTP prediction server (FastAPI behind uvicorn) for a bundle or a run.

    moskd serve --bundle DIR | --run-dir RUN [--host 127.0.0.1] [--port 8000]
                [--max-batch 32] [--gather 16] [--max-bytes 10000000] [--threads N]
                [--backend local|ray] [--replicas N]

    POST /predict   one image as the raw body (Content-Type image/* or application/octet-stream),
                    or multipart/form-data with one or more files; answers
                    {"predictions": [{"file", "class_index", "class_name", "confidence", "student",
                    "macs"}, ...]} in the order sent
    GET  /health    {"status": "ok", "requests", "images", "batches", "mean_batch"}
    GET  /info      classes, models with their MACs, the routing rule and its operating point,
                    and the serving settings

Needs the serve extra: pip install -e '.[serve]'. Batching costs no waiting: a request that finds
the model idle runs at once, alone; images that arrive while a batch runs queue up, and the next
batch takes every queued image (up to --max-batch) the moment the model is free, as one routed
batch (selector once, each student once on its share). Bodies are decoded and preprocessed in
worker threads, and the batch runs in its own thread, so the event loop keeps accepting requests
while a batch runs. --max-batch 1 turns batching off.

Under a backlog, the next batch takes up to --gather x --max-batch queued images: every model still
runs calls of at most --max-batch images, but the few images the policy defers from each of those
batches reach the next model together, in one call, instead of as sub-batches of 1-4 images whose
fixed cost per call (milliseconds in OpenVINO or onnxruntime) is what limits a routed system's
throughput (docs/BENCHMARKS.md, "Gathering deferred images"). Without a backlog nothing changes: a
request that finds the model idle still runs at once. --gather 1 runs one batch at a time, as does
--max-batch 1.

--backend ray (pip install -e '.[ray]'; a bundle only) serves the same HTTP API through Ray Serve
on a local Ray instance: one deployment per model of the bundle, batched with @serve.batch, and
the routing in an ingress deployment, each with --replicas replicas on a fraction of a CPU
(inference.serve_ray).

Bad input is answered, never fatal and never a 500: an empty or undecodable body or file -> 400
naming the problem, a body over --max-bytes -> 413 (checked on Content-Length and again on the bytes
actually received), any other content type -> 415. An oversized body is read and discarded (up to
DRAIN_BYTES) before the 413 goes out, so a client that sends the whole body before reading gets
the 413, not a reset connection; past that bound the 413 closes the connection.
"""

import asyncio
import socket
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from moskd.policy import softmax
from inference.serve_http import DRAIN_BYTES, HTTPProblem, decode_all, images_of, read_limited  # noqa: F401
from moskd.errors import MoskdError

PROG = "moskd serve"
DECODE_THREADS = 2  # PIL releases the GIL while it decodes


@dataclass
class Stats:
    requests: int = 0
    images: int = 0
    batches: int = 0
    batched_images: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=1024))  # sizes of the latest batches

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.recent)

    def add_batch(self, n: int) -> None:
        self.batches += 1
        self.batched_images += n
        self.recent.append(n)


class Batcher:
    """Batches images from concurrent requests without waiting for any: the first image to find
    the model idle runs at once; those that arrive while a batch runs are taken together, up to
    max_batch x gather (one routed window; the predictor caps each model call at max_batch), as soon
    as it ends.

    Started lazily on the first image in the running event loop (so it works under uvicorn and
    under an ASGI test transport alike)."""

    def __init__(self, predict, max_batch: int, stats: Stats, gather: int = 1):
        self.predict, self.stats = predict, stats
        self.max_take = max(1, max_batch) * max(1, gather)  # predict runs no model on more than max_batch at once
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="moskd-infer")  # one batch at a time
        self._loop = self._queue = self._task = None

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._work())

    async def submit(self, images: list[np.ndarray]) -> list:
        """(C, H, W) uint8 images of one request -> their (logits row, route, macs), in order."""
        self._ensure_started()
        futures = [self._loop.create_future() for _ in images]
        for image, fut in zip(images, futures):
            self._queue.put_nowait((image, fut))
        return await asyncio.gather(*futures)

    def _take(self, first) -> list:
        """The first item and whatever else is queued right now, up to max_batch x gather: never waits."""
        items = [first]
        while len(items) < self.max_take and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def _work(self) -> None:
        while True:
            items = self._take(await self._queue.get())
            live = [(x, f) for x, f in items if not f.done()]  # a client that went away costs nothing
            if not live:
                continue
            batch = np.stack([x for x, _ in live])
            self.stats.add_batch(len(live))
            try:
                out = await self._loop.run_in_executor(self.executor, self.predict, batch)
            except Exception as e:  # noqa: BLE001  a failed batch fails its requests, not the server
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            for i, (_, f) in enumerate(live):
                if not f.done():
                    f.set_result((out.logits[i], int(out.routes[i]), int(out.macs[i])))


def create_app(predictor, max_batch: int = 32, max_bytes: int = 10_000_000, invert: str = "auto",
               drain_bytes: int = DRAIN_BYTES, serving: dict | None = None, gather: int = 1):
    """The FastAPI app for a predictor (inference.bundle.Bundle or inference.predict.RunPredictor, or
    anything with their run/info/card/class_names/route_names). `serving`: more settings for /info.
    gather > 1: a predictor whose models run calls of at most max_batch images (max_call)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    stats = Stats()
    batcher = Batcher(predictor.run, max_batch, stats, gather)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="moskd-decode")
    app = FastAPI(title="moskd", description="routed multi-student inference")
    app.state.batcher, app.state.stats = batcher, stats
    card, classes, route_names = predictor.card, predictor.class_names, predictor.route_names
    settings = {"max_batch": max_batch, "gather": gather, "max_bytes": max_bytes, "invert": invert, **(serving or {})}

    def problem(status: int, message: str, close: bool = False) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug, still one JSON line
        return problem(500, f"internal error ({type(exc).__name__}: {str(exc)[:160]})")

    @app.get("/health")
    async def health():
        mean = stats.batched_images / stats.batches if stats.batches else 0.0
        return {"status": "ok", "requests": stats.requests, "images": stats.images, "batches": stats.batches,
                "mean_batch": round(mean, 3)}

    @app.get("/info")
    async def info():
        return {**predictor.info(), "serving": settings}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            parts = await images_of(request, max_bytes, drain_bytes)
            arrays = await asyncio.get_running_loop().run_in_executor(decoder, decode_all, parts, card, invert)
        except HTTPProblem as e:
            return problem(e.status, str(e), e.close)
        stats.requests += 1
        stats.images += len(arrays)
        results = await batcher.submit(arrays)
        preds = []
        for (name, _), (logits, route, macs) in zip(parts, results):
            p = softmax(logits[None].astype(np.float64))[0]
            k = int(p.argmax())
            preds.append({"file": name, "class_index": k, "class_name": classes[k], "confidence": float(p[k]),
                          "student": route_names[route], "macs": macs})
        return JSONResponse({"predictions": preds})  # what returning the dict gives, without its encoder pass

    return app


def check_port(host: str, port: int) -> int:
    """Fail with one line before loading models when the address cannot be bound; the port (a free
    one for port 0)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            return s.getsockname()[1]
    except OSError as e:
        raise MoskdError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port or --host") from None


def window_batches(a) -> int:
    """Batches a backlog window takes: --gather, except with --max-batch 1 (no batching: each call is one
    image, so a window would only make the first image wait)."""
    return a.gather if a.max_batch > 1 else 1


def serve_local(a) -> int:
    """The local server once `moskd serve` has parsed its flags (inference.cli.serve_main; a: ServeConfig)."""
    import uvicorn

    port = check_port(a.host, a.port)
    if a.threads:
        try:
            import torch

            torch.set_num_threads(a.threads)
        except ImportError:
            pass
    from inference.predict import load_predictor, open_bundle

    gather = window_batches(a)
    most = a.max_batch if gather > 1 else None  # a gathered window runs every model in calls of max_batch
    if a.bundle is not None:  # the bundle's runtime: no checkpoints, no training models
        predictor = open_bundle(a.bundle, a.threads, max_call=most)
    else:
        predictor = load_predictor(a.run_dir, None, "cpu", max_call=most)
    app = create_app(predictor, a.max_batch, a.max_bytes, a.invert, serving={"backend": "local"}, gather=gather)
    print(f"{PROG}: {a.bundle or a.run_dir} on http://{a.host}:{port} (POST /predict, GET /health, GET /info)",
          flush=True)
    uvicorn.run(app, host=a.host, port=port, log_level="warning")
    return 0
