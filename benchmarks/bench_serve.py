"""`moskd serve` under load on the loopback address: latency and throughput, with and without
coalescing, plus garbage bodies that must never cost a 5xx or a lost request.

    python benchmarks/bench_serve.py --bundle DIR [--requests 200] [--concurrency 1 8 32]
                                     [--garbage 0.1] [--max-wait-ms 5] [--threads N]

Starts the real server (`python -m moskd.cli serve`, uvicorn) once per setting on a free loopback
port: coalescing on (--max-batch 32, --max-wait-ms as given) and off (--max-batch 1). For each
concurrency level it sends a bounded number of requests (--requests) from that many concurrent
clients: digits test images as PNG bodies, and a --garbage share of bad bodies (random bytes, an
empty body, a wrong content type, a body over the size limit). Printed per row: p50 and p99 latency
of the image requests, images per second, the mean routed batch size (from /health), and the
status counts; any 5xx or any request without an answer is counted and flagged.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 200_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digit_pngs(n: int) -> list[bytes]:
    sys.path.insert(0, str(ROOT))
    from moskd.data import load_data

    images = load_data("digits").splits["test"].images[:n, 0].numpy()
    out = []
    for a in images:
        buf = io.BytesIO()
        Image.fromarray(a, "L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def garbage(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(200)), "image/png"  # undecodable -> 400
    if kind == 1:
        return b"", "image/png"  # empty -> 400
    if kind == 2:
        return b"hello", "text/plain"  # wrong type -> 415
    return b"\0" * (MAX_BYTES + 1), "image/png"  # too large -> 413


class Server:
    def __init__(self, bundle: str, max_batch: int, max_wait_ms: float, threads: int | None):
        self.port = free_port()
        cmd = [sys.executable, "-m", "moskd.cli", "serve", "--bundle", bundle, "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-bytes", str(MAX_BYTES)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise SystemExit("server did not answer /health within 120 s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(url: str, pngs: list[bytes], requests: int, concurrency: int, garbage_share: float, seed: int):
    rng = random.Random(seed)
    jobs = []
    for i in range(requests):
        if rng.random() < garbage_share:
            jobs.append(("garbage", *garbage(rng)))
        else:
            jobs.append(("image", pngs[i % len(pngs)], "image/png"))
    latencies, statuses, lost = [], {}, 0
    queue = list(enumerate(jobs))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker():
            nonlocal lost
            while queue:
                _, (kind, body, ctype) = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", content=body, headers={"content-type": ctype})
                except httpx.HTTPError:
                    lost += 1
                    continue
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if kind == "image":
                    if r.status_code == 200 and len(r.json()["predictions"]) == 1:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        lost += 1  # a good image must be answered with its prediction

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        health = (await client.get("/health")).json()
    return latencies, statuses, lost, wall, health


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder (moskd export)")
    p.add_argument("--requests", type=int, default=200, help="requests per (setting, concurrency)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--garbage", type=float, default=0.1, help="share of bad bodies")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=None, help="server's torch/onnxruntime threads")
    a = p.parse_args(argv)
    pngs = digit_pngs(64)
    print(f"bundle {a.bundle}; {a.requests} requests per row, {a.garbage:.0%} garbage bodies; loopback")
    print(f"{'coalescing':<22} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>8} {'batch':>6}  statuses  lost  5xx")
    bad = 0
    for label, max_batch in ((f"on (32, {a.max_wait_ms:g} ms)", 32), ("off (max-batch 1)", 1)):
        server = Server(a.bundle, max_batch, a.max_wait_ms, a.threads)
        try:
            for conc in a.concurrency:
                before = httpx.get(server.url + "/health").json()
                lat, statuses, lost, wall, health = asyncio.run(
                    load(server.url, pngs, a.requests, conc, a.garbage, seed=conc))
                images = health["images"] - before["images"]
                batches = max(1, health["batches"] - before["batches"])
                q = statistics.quantiles(lat, n=100) if len(lat) > 1 else (lat or [float("nan")]) * 99
                fives = sum(v for k, v in statuses.items() if k >= 500)
                bad += fives + lost
                shown = " ".join(f"{k}:{v}" for k, v in sorted(statuses.items()))
                print(f"{label:<22} {conc:>4} {q[49] * 1000:>8.1f} {q[98] * 1000:>8.1f} {images / wall:>8.1f} "
                      f"{images / batches:>6.1f}  {shown}  {lost:>4} {fives:>4}", flush=True)
        finally:
            server.stop()
    print("no 5xx and no lost request" if bad == 0 else f"FAILED: {bad} 5xx or lost requests")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
