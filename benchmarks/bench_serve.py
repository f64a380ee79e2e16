"""`moskd serve` under load on the loopback address: latency and throughput with batching on and
off (and through Ray Serve), plus garbage bodies that must never cost a 5xx or a lost request.

    python benchmarks/bench_serve.py --bundle DIR [--requests 150] [--concurrency 1 8 32]
                                     [--garbage 0.1] [--max-batch 32] [--threads 1] [--rounds 8]
                                     [--ray] [--replicas 1]

This script is the client, in its own process; each server is a `moskd serve` subprocess on a free
loopback port. The two single-process servers (--max-batch as given, and --max-batch 1) run side
by side, so both see the same machine load: at concurrency 1 one client sends each request to
each server in turn; above it they take turns (--rounds rounds, the order swapped each round). With --ray, a `moskd serve --backend ray` server is
measured after them (Ray's own processes are not running while the others are measured). At
concurrency 1 a third server, identical to the batched one, is paired with them as a control:
how far apart two identical servers' p50s come out is the noise floor of the p50 check.

Each row sends --requests requests per round from that many concurrent clients (keep-alive
HTTP/1.1 connections on asyncio streams, one per client):
digits test images as PNG bodies, and a --garbage share of bad bodies (random bytes, an empty body,
a wrong content type, a body over the size limit). Printed per row: p50 and p99 latency of the
image requests, images per second, the server's CPU time per image (its process and every
descendant: with Ray, all of Ray's processes; from /proc), the mean routed batch size (from
/health; with Ray, the ingress's batches), the status counts,
and any 5xx or image without its answer (lost). Then the issue's checks, each PASS or FAIL: at the
highest concurrency, mean batch >= 8 and images/s >= 1.3x --max-batch 1; at concurrency 1, p50
within 1 ms of --max-batch 1; no 5xx and nothing lost anywhere.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
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


def cpu_seconds(root: int) -> float | None:
    """CPU time (user + system) of a process and all its descendants so far (Ray's processes are the
    server's); None where /proc is not there."""
    tick, parent, used = os.sysconf("SC_CLK_TCK"), {}, {}
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[pid], used[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid in used:
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        total += used[pid] if p == root else 0.0
    return total


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
    def __init__(self, bundle: str, args: list[str], python: str = sys.executable, wait_s: float = 300):
        self.port = free_port()
        cmd = [python, "-m", "moskd.cli", "serve", "--bundle", bundle, "--port", str(self.port),
               "--max-bytes", str(MAX_BYTES), *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-800:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"server did not answer /health within {wait_s:.0f} s")

    def stop(self):
        self.proc.terminate()  # the Ray backend shuts Ray down on SIGTERM
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Connection:
    """A keep-alive HTTP/1.1 connection on asyncio streams: a far lighter client than httpx, so on
    2 shared cores the client takes as little as possible of the CPU the servers are measured on."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def request(self, method: str, path: str, body: bytes = b"", ctype: str | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        try:
            self.writer.write(head.encode() + b"\r\n" + body)
            await self.writer.drain()
            status = int((await self.reader.readline()).split()[1])
            headers = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip().lower()
            if headers.get("transfer-encoding") == "chunked":
                data = b""
                while (n := int((await self.reader.readline()).strip(), 16)):
                    data += await self.reader.readexactly(n)
                    await self.reader.readline()
                await self.reader.readline()
            else:
                data = await self.reader.readexactly(int(headers.get("content-length", 0)))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            self.close()
            raise ConnectionError(f"{method} {path}: no answer") from None
        if headers.get("connection") == "close":
            self.close()
        return status, data

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def health(port: int) -> dict:
    c = Connection(port)
    try:
        return json.loads((await c.request("GET", "/health"))[1])
    finally:
        c.close()


def jobs_for(requests: int, pngs: list[bytes], garbage_share: float, seed: int) -> list:
    rng = random.Random(seed)
    jobs = []
    for i in range(requests):
        if rng.random() < garbage_share:
            jobs.append(("garbage", *garbage(rng)))
        else:
            jobs.append(("image", pngs[i % len(pngs)], "image/png"))
    return jobs


def new_row() -> dict:
    return {"lat": [], "statuses": {}, "lost": 0, "wall": 0.0, "images": 0, "batches": 0, "cpu": 0.0}


async def send(conn: Connection, job, row: dict) -> None:
    """One job on one connection, its outcome counted in row (row["wall"] gains its time)."""
    kind, body, ctype = job
    t0 = time.perf_counter()
    try:
        status, data = await conn.request("POST", "/predict", body, ctype)
    except ConnectionError:
        row["lost"] += 1
        return
    finally:
        row["wall"] += time.perf_counter() - t0
    row["statuses"][status] = row["statuses"].get(status, 0) + 1
    if kind == "image":
        if status == 200 and len(json.loads(data)["predictions"]) == 1:
            row["lat"].append(time.perf_counter() - t0)
        else:
            row["lost"] += 1  # a good image must be answered with its prediction


async def load(servers: list, jobs: list, concurrency: int) -> list[dict]:
    """One row per server. One server: `concurrency` clients share the jobs (row["wall"]: the
    elapsed time). Several servers (concurrency 1 only): one client sends each job to every server
    in turn, the order rotating job by job, so they see the same machine load request by request
    (row["wall"]: the time spent waiting on that server)."""
    assert len(servers) == 1 or concurrency == 1
    rows = [new_row() for _ in servers]
    before = [await health(s.port) for s in servers]
    cpu0 = [cpu_seconds(s.proc.pid) for s in servers]
    queue = list(reversed(jobs))

    async def worker():
        conns = [Connection(s.port) for s in servers]
        turn = 0
        while queue:
            job = queue.pop()
            for k in range(len(servers)):
                i = (turn + k) % len(servers)
                await send(conns[i], job, rows[i])
            turn += 1
        for c in conns:
            c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if len(servers) == 1:
        rows[0]["wall"] = time.perf_counter() - t0
    for s, row, b, c0 in zip(servers, rows, before, cpu0):
        after, c1 = await health(s.port), cpu_seconds(s.proc.pid)
        row["cpu"] = None if c0 is None or c1 is None else c1 - c0
        row["images"], row["batches"] = after["images"] - b["images"], after["batches"] - b["batches"]
    return rows


def merge(rows: list[dict]) -> dict:
    out = new_row()
    for r in rows:
        out["lat"] += r["lat"]
        out["lost"] += r["lost"]
        out["cpu"] = None if out["cpu"] is None or r["cpu"] is None else out["cpu"] + r["cpu"]
        for k in ("wall", "images", "batches"):
            out[k] += r[k]
        for k, v in r["statuses"].items():
            out["statuses"][k] = out["statuses"].get(k, 0) + v
    q = statistics.quantiles(out["lat"], n=100) if len(out["lat"]) > 1 else [float("nan")] * 99
    out.update(cpu_ms=float("nan") if out["cpu"] is None else 1000 * out["cpu"] / max(1, out["images"]),
               p50=q[49] * 1000, p99=q[98] * 1000, rate=out["images"] / out["wall"],
               batch=out["images"] / max(1, out["batches"]), fives=sum(v for k, v in out["statuses"].items() if k >= 500))
    return out


def show(label: str, conc: int, r: dict) -> None:
    shown = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
    print(f"| {label} | {conc} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rate']:.1f} | {r['cpu_ms']:.2f} | {r['batch']:.1f} | {shown} "
          f"| {r['lost']} | {r['fives']} |", flush=True)


def measure(servers: dict, pngs, a) -> dict:
    """{(label, concurrency): merged row}. At concurrency 1 every request goes to each server in
    turn; above it the servers take turns, --rounds times, the order swapped every round."""
    rows = {}
    for conc in a.concurrency:
        labels = [x for x in servers if conc == 1 or CONTROL not in x]  # the control pairs at concurrency 1 only
        got = {label: [] for label in labels}
        if conc == 1:
            jobs = jobs_for(a.requests * a.rounds, pngs, a.garbage, seed=1)
            for label, row in zip(labels, asyncio.run(load([servers[x] for x in labels], jobs, 1))):
                got[label].append(row)
        else:
            for rnd in range(a.rounds):
                jobs = jobs_for(a.requests, pngs, a.garbage, seed=1000 * conc + rnd)
                for label in labels if rnd % 2 == 0 else labels[::-1]:
                    got[label] += asyncio.run(load([servers[label]], jobs, conc))
        for label in labels:
            rows[label, conc] = merge(got[label])
            show(label, conc, rows[label, conc])
    return rows


CONTROL = "(control)"


def warm(server: Server, pngs) -> None:
    asyncio.run(load([server], jobs_for(40, pngs, 0.0, seed=0), 4))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder (moskd export)")
    p.add_argument("--requests", type=int, default=150, help="requests per row and round")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--garbage", type=float, default=0.1, help="share of bad bodies")
    p.add_argument("--max-batch", type=int, default=32, help="the batching server's --max-batch")
    p.add_argument("--threads", type=int, default=1, help="servers' torch/onnxruntime threads")
    p.add_argument("--rounds", type=int, default=8, help="turns each server takes per concurrency level")
    p.add_argument("--ray", action="store_true", help="also measure moskd serve --backend ray")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas per deployment")
    p.add_argument("--ray-python", default=sys.executable, help="with --ray: the Python that has ray installed")
    a = p.parse_args(argv)
    pngs = digit_pngs(64)
    print(f"bundle {a.bundle}; {a.requests} requests per row and round, {a.rounds} rounds, {a.garbage:.0%} garbage "
          f"bodies; loopback; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"Python {platform.python_version()}")
    print("| server | concurrency | p50 ms | p99 ms | images/s | server CPU ms/image | mean batch | statuses | lost | 5xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    common = ["--threads", str(a.threads)]
    on, off = f"batched (max-batch {a.max_batch})", "max-batch 1"
    servers = {}
    try:
        servers[on] = Server(a.bundle, ["--max-batch", str(a.max_batch), *common])
        servers[off] = Server(a.bundle, ["--max-batch", "1", *common])
        if min(a.concurrency) == 1:  # the noise floor: a second process identical to the batched one
            servers[f"{on} {CONTROL}"] = Server(a.bundle, ["--max-batch", str(a.max_batch), *common])
        for s in servers.values():
            warm(s, pngs)
        rows = measure(servers, pngs, a)
    finally:
        for s in servers.values():
            s.stop()
    if a.ray:
        label = f"ray (replicas {a.replicas}, max-batch {a.max_batch})"
        ray = Server(a.bundle, ["--backend", "ray", "--replicas", str(a.replicas), "--max-batch", str(a.max_batch),
                                *common], python=a.ray_python)
        try:
            warm(ray, pngs)
            rows.update(measure({label: ray}, pngs, a))
        finally:
            ray.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    hi, lo = max(a.concurrency), min(a.concurrency)
    checks = [
        (f"concurrency {hi}: mean batch {rows[on, hi]['batch']:.1f} >= 8", rows[on, hi]["batch"] >= 8),
        (f"concurrency {hi}: images/s {rows[on, hi]['rate']:.1f} / {rows[off, hi]['rate']:.1f} = "
         f"{rows[on, hi]['rate'] / rows[off, hi]['rate']:.2f}x >= 1.3x", rows[on, hi]["rate"] >= 1.3 * rows[off, hi]["rate"]),
        (f"concurrency {lo}: p50 {rows[on, lo]['p50']:.2f} ms vs {rows[off, lo]['p50']:.2f} ms, within 1 ms",
         abs(rows[on, lo]["p50"] - rows[off, lo]["p50"]) <= 1.0),
        ("no 5xx and no lost request in any row", all(r["fives"] == 0 and r["lost"] == 0 for r in rows.values())),
    ]
    if (f"{on} {CONTROL}", 1) in rows:
        print(f"noise floor at concurrency 1: two identical batched servers' p50 {rows[on, 1]['p50']:.2f} ms and "
              f"{rows[f'{on} {CONTROL}', 1]['p50']:.2f} ms")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
