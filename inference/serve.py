"""`moskd serve`: an HTTP prediction server (FastAPI behind uvicorn) for a bundle or a run.

    moskd serve --bundle DIR | --run-dir RUN [--host 127.0.0.1] [--port 8000]
                [--max-batch 32] [--max-wait-ms 5] [--max-bytes 10000000]

    POST /predict   one image as the raw body (Content-Type image/* or application/octet-stream),
                    or multipart/form-data with one or more files; answers
                    {"predictions": [{"file", "class_index", "class_name", "confidence", "student",
                    "macs"}, ...]} in the order sent
    GET  /health    {"status": "ok", "requests", "images", "batches"}
    GET  /info      classes, models with their MACs, the routing rule and its operating point,
                    and the serving settings

Needs the serve extra: pip install -e '.[serve]'. Concurrent requests are coalesced: every image
goes into one queue and a single worker takes up to --max-batch of them, waiting at most
--max-wait-ms for more after the first, and runs them as one routed batch (selector once, each
student once on its share) in a worker thread, so the event loop keeps accepting requests.
--max-batch 1 turns coalescing off.

Bad input is answered, never fatal and never a 500: an empty or undecodable body or file -> 400
naming the problem, a body over --max-bytes -> 413 (checked on Content-Length and again on the bytes
actually received), any other content type -> 415.
"""

import argparse
import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from moskd.policy import softmax
from inference.images import BadImage, decode_bytes
from moskd.config import Parser  # one-line errors, 'did you mean', values checked by name
from moskd.errors import MoskdError, cli_entry

PROG = "moskd serve"
RAW_TYPES = ("application/octet-stream",)  # plus any image/* type
MAX_FILES = 256  # images in one multipart request


class HTTPProblem(Exception):
    """A request the server refuses: status code and one line saying what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Stats:
    requests: int = 0
    images: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # one entry per routed batch run


class Batcher:
    """Coalesces images from concurrent requests into routed batches.

    Started lazily on the first image in the running event loop (so it works under uvicorn and
    under an ASGI test transport alike)."""

    def __init__(self, predict, max_batch: int, max_wait_ms: float, stats: Stats):
        self.predict, self.max_batch, self.max_wait = predict, max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.stats = stats
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="moskd-infer")  # one batch at a time
        self._loop = self._queue = self._task = None

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._work())

    async def submit(self, image: np.ndarray):
        """One (C, H, W) uint8 image -> (logits row, route, macs)."""
        self._ensure_started()
        fut = self._loop.create_future()
        await self._queue.put((image, fut))
        return await fut

    async def _collect(self) -> list:
        items = [await self._queue.get()]
        deadline = self._loop.time() + self.max_wait
        while len(items) < self.max_batch:
            left = deadline - self._loop.time()
            try:
                if left <= 0:  # out of waiting time: still take what has already arrived
                    items.append(self._queue.get_nowait())
                else:
                    items.append(await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return items

    async def _work(self) -> None:
        while True:
            items = await self._collect()
            live = [(x, f) for x, f in items if not f.done()]  # a client that went away costs nothing
            if not live:
                continue
            batch = np.stack([x for x, _ in live])
            self.stats.batch_sizes.append(len(live))
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


async def read_limited(request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything over max_bytes, declared or actually sent."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise HTTPProblem(413, f"body of {int(declared):,} bytes is over the {max_bytes:,}-byte limit; "
                                       f"send a smaller image")
        except ValueError:
            raise HTTPProblem(400, f"Content-Length {declared!r} is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPProblem(413, f"body is over the {max_bytes:,}-byte limit; send a smaller image")
        chunks.append(chunk)
    return b"".join(chunks)


async def images_of(request, max_bytes: int) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every image in the request, raw body or multipart."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        from starlette.formparsers import MultiPartException, MultiPartParser

        body = await read_limited(request, max_bytes)

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=MAX_FILES, max_fields=MAX_FILES,
                                         max_part_size=max_bytes).parse()
        except MultiPartException as e:
            raise HTTPProblem(400, f"malformed multipart body ({e.message}); send files as multipart/form-data")
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise HTTPProblem(400, "multipart body holds no file; send each image as a file field")
        out = []
        for f in files:
            out.append((f.filename, await f.read()))
            await f.close()
        return out
    if media.startswith("image/") or media in RAW_TYPES:
        return [(None, await read_limited(request, max_bytes))]
    shown = media or "none"
    raise HTTPProblem(415, f"content type {shown} is not accepted; send the image as the body with "
                           f"Content-Type image/png (or image/*, application/octet-stream) or as multipart/form-data")


def create_app(predictor, max_batch: int = 32, max_wait_ms: float = 5.0, max_bytes: int = 10_000_000,
               invert: str = "auto"):
    """The FastAPI app for a predictor (inference.bundle.Bundle or inference.predict.RunPredictor)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    stats = Stats()
    batcher = Batcher(predictor.run, max_batch, max_wait_ms, stats)
    app = FastAPI(title="moskd", description="routed multi-student inference")
    app.state.batcher, app.state.stats = batcher, stats
    card, classes, route_names = predictor.card, predictor.class_names, predictor.route_names
    settings = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_bytes": max_bytes, "invert": invert}

    def problem(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug, still one JSON line
        return problem(500, f"internal error ({type(exc).__name__}: {str(exc)[:160]})")

    @app.get("/health")
    async def health():
        return {"status": "ok", "requests": stats.requests, "images": stats.images,
                "batches": len(stats.batch_sizes)}

    @app.get("/info")
    async def info():
        return {**predictor.info(), "serving": settings}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            parts = await images_of(request, max_bytes)
            arrays = []
            for name, data in parts:
                try:
                    arrays.append(decode_bytes(data, card, invert))
                except BadImage as e:
                    where = f"file {name!r}: " if name is not None else ""
                    raise HTTPProblem(400, f"{where}{e}") from None
        except HTTPProblem as e:
            return problem(e.status, str(e))
        stats.requests += 1
        stats.images += len(arrays)
        results = await asyncio.gather(*(batcher.submit(a) for a in arrays))
        preds = []
        for (name, _), (logits, route, macs) in zip(parts, results):
            p = softmax(logits[None].astype(np.float64))[0]
            k = int(p.argmax())
            preds.append({"file": name, "class_index": k, "class_name": classes[k], "confidence": float(p[k]),
                          "student": route_names[route], "macs": macs})
        return {"predictions": preds}

    return app


def parse_args(argv) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", metavar="DIR", help="deployment bundle written by moskd export")
    src.add_argument("--run-dir", metavar="RUN", help="run directory (loads checkpoints and training code)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--max-batch", type=int, default=32, help="most images coalesced into one routed batch "
                                                            "(1 = no coalescing)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for more images after the first")
    p.add_argument("--max-bytes", type=int, default=10_000_000, help="largest accepted request body")
    p.add_argument("--escalate", type=float, default=None, metavar="TAU", help="with --run-dir: cascade threshold")
    p.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                   help="auto: digits models invert light-background images")
    p.add_argument("--threads", type=int, default=None, help="torch/onnxruntime threads (default: theirs)")
    return p.parse_args(argv)  # ranges (--port, --max-batch, ...) checked by name: moskd.values.RANGES


def check_port(host: str, port: int) -> None:
    """Fail with one line before loading models when the address cannot be bound."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise MoskdError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port or --host") from None


@cli_entry(PROG)
def main(argv=None):
    a = parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise MoskdError(f"moskd serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    check_port(a.host, a.port)
    if a.threads:
        try:
            import torch

            torch.set_num_threads(a.threads)
        except ImportError:
            pass
    from inference.predict import load_predictor, open_bundle

    if a.bundle is not None:  # the bundle's runtime: no checkpoints, no training models
        predictor = open_bundle(a.bundle, a.escalate, a.threads)
    else:
        predictor = load_predictor(a.run_dir, None, a.escalate, "cpu")
    app = create_app(predictor, a.max_batch, a.max_wait_ms, a.max_bytes, a.invert)
    print(f"{PROG}: {a.bundle or a.run_dir} on http://{a.host}:{a.port} (POST /predict, GET /health, GET /info)",
          flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


if __name__ == "__main__":
    main()
