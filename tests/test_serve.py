"""moskd serve: answers equal the bundle's, each error status (400, 413, 415) with its one line,
batching without waiting (an idle model runs at once, what queues meanwhile is the next batch),
a 413 that reaches a client sending the whole body first, several files in one request."""
from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from inference.bundle import load_bundle
from inference.serve import create_app
from inference.cli import serve_main
from moskd.data import load_data
from tests.test_export import bundles  # noqa: F401  (module fixture: torch and ONNX bundles of a tiny run)
from tests.test_selector import trained_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    return load_data("digits").splits["test"].images[:6, 0].numpy()


@pytest.fixture(scope="module")
def bundle(bundles):  # noqa: F811
    return load_bundle(bundles["torch"][0])


@pytest.fixture
def client(bundle):
    with TestClient(create_app(bundle, max_batch=8, max_bytes=20_000)) as c:
        yield c


def test_raw_and_multipart_answers_equal_the_bundle(client, bundle, images):
    want = bundle.run(images[:, None])
    r = client.post("/predict", content=png(images[0]), headers={"content-type": "image/png"})
    assert r.status_code == 200
    (p,) = r.json()["predictions"]
    assert p["class_index"] == int(want.logits[0].argmax()) and p["class_name"] == bundle.class_names[p["class_index"]]
    assert p["student"] == bundle.route_names[want.routes[0]] and p["macs"] == int(want.macs[0])
    files = [("file", (f"{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    r = client.post("/predict", files=files)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [q["file"] for q in preds] == [f"{i}.png" for i in range(len(images))]  # order kept
    assert [q["class_index"] for q in preds] == want.logits.argmax(1).tolist()
    assert all(0 < q["confidence"] <= 1 for q in preds)
    health, info = client.get("/health").json(), client.get("/info").json()
    assert health["status"] == "ok" and health["images"] == 1 + len(images)
    assert info["classes"] == bundle.class_names and info["serving"]["max_batch"] == 8
    assert info["models"]["selector"]["macs"] == bundle.selector_macs


@pytest.mark.parametrize("body, ctype, status, words", [
    (b"", "image/png", 400, "empty body"),
    (b"this is not an image", "image/png", 400, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "application/octet-stream", 400, "image"),
    (b"x" * 30_000, "image/png", 413, "limit"),
    (b"hello", "text/plain", 415, "content type text/plain"),
    (b"hello", None, 415, "multipart/form-data"),
    (b"--zzz\r\nbroken", "multipart/form-data; boundary=zzz", 400, "multipart"),
])
def test_bad_input_gets_its_status_and_one_line(client, body, ctype, status, words):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and "\n" not in r.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_bad_file_among_good_ones_is_named_and_oversized_stream_is_refused(client, images):
    files = [("file", ("good.png", png(images[0]), "image/png")), ("file", ("bad.png", b"garbage", "image/png"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 400 and "bad.png" in r.json()["error"]
    r = client.post("/predict", files={"note": (None, "no file here")})  # multipart with a text field only
    assert r.status_code == 400 and "holds no file" in r.json()["error"]

    def chunks():  # no Content-Length: the limit must hold on the bytes actually received
        for _ in range(5):
            yield b"y" * 10_000

    r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


def concurrent_posts(app, images) -> list:
    """One raw-PNG request per image, all in flight at once, through the ASGI app in one event loop."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/predict", content=png(a), headers={"content-type": "image/png"})
                                          for a in images))

    return asyncio.run(go())


class Gated:
    """The bundle behind a gate: its first batch holds the model until the test opens the gate."""

    def __init__(self, bundle):
        self.bundle, self.started, self.gate = bundle, threading.Event(), threading.Event()
        self.card, self.class_names, self.route_names = bundle.card, bundle.class_names, bundle.route_names
        self.info = bundle.info

    def run(self, x):
        self.started.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.bundle.run(x)


def one_then_a_backlog(app, gated, images) -> list:
    """The first image runs alone and holds the model at the gate; the rest queue behind it (all of
    them decoded and queued) before the gate opens. The replies, in the order sent."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            post = lambda a: c.post("/predict", content=png(a), headers={"content-type": "image/png"})  # noqa: E731
            first = asyncio.ensure_future(post(images[0]))
            assert await asyncio.to_thread(gated.started.wait, 60)
            rest = [asyncio.ensure_future(post(a)) for a in images[1:]]
            while app.state.batcher._queue.qsize() < len(rest):
                await asyncio.sleep(0.005)
            gated.gate.set()
            return await asyncio.gather(first, *rest)

    return asyncio.run(go())


def test_an_idle_model_runs_at_once_and_what_queues_meanwhile_is_the_next_batch(bundle, images):
    # no timing: the first image runs alone the moment it arrives (the model was idle); three sent
    # while that batch holds the model queue up and run together as the next batch
    gated = Gated(bundle)
    app = create_app(gated, max_batch=8)
    replies = one_then_a_backlog(app, gated, images[:4])
    assert [r.status_code for r in replies] == [200] * 4
    assert app.state.stats.batch_sizes == [1, 3]
    want = bundle.run(images[:4, None]).logits.argmax(1).tolist()
    assert [r.json()["predictions"][0]["class_index"] for r in replies] == want
    assert asyncio.run(_health(app))["mean_batch"] == 2.0


async def _health(app) -> dict:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return (await c.get("/health")).json()


def test_max_batch_caps_the_next_batch(bundle, images):
    gated = Gated(bundle)
    app = create_app(gated, max_batch=2)

    assert [r.status_code for r in one_then_a_backlog(app, gated, images[:6])] == [200] * 6
    assert app.state.stats.batch_sizes == [1, 2, 2, 1]


def test_a_backlog_runs_as_one_gathered_window_in_calls_of_max_batch(bundles, images, monkeypatch):  # noqa: F811
    # --gather 2 --max-batch 2: five images queued behind a running one are taken as a window of four,
    # then one; the bundle (max_call 2) still runs no model on more than two images at once
    import inference.bundle as bundle_module

    calls, real = [], bundle_module.in_calls
    spy = lambda run: (lambda x: calls.append(len(x)) or run(x))  # noqa: E731
    monkeypatch.setattr(bundle_module, "in_calls", lambda run, pow2=False, most=None:
                        real(spy(run) if most else run, pow2, most))
    capped = load_bundle(bundles["torch"][0], max_call=2)
    gated = Gated(capped)
    app = create_app(gated, max_batch=2, gather=2)
    replies = one_then_a_backlog(app, gated, images[:6])
    assert [r.status_code for r in replies] == [200] * 6
    assert app.state.stats.batch_sizes == [1, 4, 1]
    assert calls and max(calls) == 2  # the window of four reached a model as calls of two
    want = load_bundle(bundles["torch"][0]).run(images[:6, None]).logits.argmax(1).tolist()
    assert [r.json()["predictions"][0]["class_index"] for r in replies] == want
    assert asyncio.run(_health(app))["batches"] == 3


def test_without_batching_each_image_is_its_own_batch(bundle, images):
    app = create_app(bundle, max_batch=1)
    assert [r.status_code for r in concurrent_posts(app, images[:3])] == [200] * 3
    assert app.state.stats.batch_sizes == [1, 1, 1]


@contextlib.contextmanager
def live_server(app):
    """The app under real uvicorn (h11) on a free loopback port, in a thread."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http="h11", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and server.servers):
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)


def _reply(sock) -> bytes:
    """One HTTP/1.1 response (headers and a Content-Length body) read from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response: {data[:200]!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_client_that_sends_the_whole_oversized_body_before_reading_gets_its_413(bundle):
    # 48 MB: more than the loopback socket buffers hold, so the client's sendall finishes only
    # because the server reads (and drops) the body; then it reads its 413, and the connection
    # still serves the next request
    app = create_app(bundle, max_bytes=20_000)
    size, block = 48 << 20, b"z" * (1 << 20)
    with live_server(app) as port, socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                  + f"Content-Length: {size}\r\n\r\n".encode())
        for _ in range(size // len(block)):
            s.sendall(block)
        reply = _reply(s)
        assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply, reply[:300]
        assert b"connection: close" not in reply.lower()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _reply(s).startswith(b"HTTP/1.1 200")


def test_a_body_past_the_drain_bound_gets_its_413_and_a_closed_connection(bundle):
    app = create_app(bundle, max_bytes=20_000, drain_bytes=100_000)
    with live_server(app) as port:
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=b"z" * 200_000, headers={"content-type": "image/png"})
        assert r.status_code == 413 and r.headers["connection"] == "close"
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=b"z" * 50_000, headers={"content-type": "image/png"})
        assert r.status_code == 413 and r.headers.get("connection") != "close"  # read to its end: keep-alive


def test_serve_cli_errors_are_one_line(bundles, tmp_path, cli):  # noqa: F811
    code, _, err = cli(serve_main, ["--bundle", str(tmp_path / "none"), "--port", "0"])
    assert code == 2 and "manifest.json not found" in err
    code, _, err = cli(serve_main, ["--bundle", str(bundles["torch"][0]), "--escalate", "0.5", "--port", "0"])
    assert code == 2 and "--escalate" in err  # escalation is the routing policy's (RUN/policy.json), not a flag
    code, _, err = cli(serve_main, [])
    assert code == 2 and "--bundle" in err


@pytest.mark.parametrize("flags, words", [
    (["--replicas", "0", "--backend", "ray"], "--replicas 0: must be >= 1"),
    (["--replicas", "2"], "--replicas needs --backend ray"),
    (["--backend", "rayy"], "did you mean ray?"),
    (["--max-wait-ms", "5"], "unrecognized arguments: --max-wait-ms"),
    (["--gather", "0"], "--gather 0: must be >= 1"),
])
def test_backend_flags_are_checked_in_one_line(bundles, flags, words, cli):  # noqa: F811
    code, _, err = cli(serve_main, ["--bundle", str(bundles["torch"][0]), "--port", "0", *flags])
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("max_batch, gather, take, most", [(4, 3, 12, 4), (4, 1, 4, None), (1, 8, 1, None)])
def test_serve_gathers_a_window_of_batches_in_calls_of_max_batch(bundles, cli, monkeypatch,  # noqa: F811
                                                                 max_batch, gather, take, most):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    code, _, err = cli(serve_main, ["--bundle", str(bundles["onnx"][0]), "--port", "0", "--max-batch", str(max_batch),
                                    "--gather", str(gather)])
    assert code == 0, err
    batcher = apps[0].state.batcher  # --max-batch 1 is no batching: no window either
    assert batcher.max_take == take and batcher.predict.__self__.max_call == most


def test_ray_backend_needs_a_bundle_and_the_ray_extra(bundles, tmp_path, cli, monkeypatch):  # noqa: F811
    code, _, err = cli(serve_main, ["--run-dir", str(tmp_path), "--backend", "ray", "--port", "0"])
    assert code == 2 and "--backend ray serves a bundle" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    monkeypatch.delitem(sys.modules, "inference.serve_ray", raising=False)
    code, _, err = cli(serve_main, ["--bundle", str(bundles["torch"][0]), "--backend", "ray", "--port", "0"])
    assert code == 2 and "pip install -e '.[ray]'" in err and len(err.strip().splitlines()) == 1, err
