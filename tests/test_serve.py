"""moskd serve: answers equal the bundle's, each error status (400, 413, 415) with its one line,
coalescing (two concurrent requests served by one routed batch), several files in one request."""
from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from inference.bundle import load_bundle
from inference.serve import create_app
from inference.serve import main as serve_main
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
    with TestClient(create_app(bundle, max_batch=8, max_wait_ms=1, max_bytes=20_000)) as c:
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


def test_two_concurrent_requests_are_served_by_one_batch(bundle, images):
    # max_batch 2 with a long max wait: the batch runs as soon as both images are queued, and only
    # then, so one batch of 2 proves coalescing without relying on timing
    app = create_app(bundle, max_batch=2, max_wait_ms=60_000)
    replies = concurrent_posts(app, images[:2])
    assert [r.status_code for r in replies] == [200, 200]
    assert app.state.stats.batch_sizes == [2]
    want = bundle.run(images[:2, None]).logits.argmax(1).tolist()
    assert [r.json()["predictions"][0]["class_index"] for r in replies] == want


def test_without_coalescing_each_image_is_its_own_batch(bundle, images):
    app = create_app(bundle, max_batch=1, max_wait_ms=60_000)
    assert [r.status_code for r in concurrent_posts(app, images[:3])] == [200] * 3
    assert app.state.stats.batch_sizes == [1, 1, 1]


def test_serve_cli_errors_are_one_line(bundles, tmp_path, cli):  # noqa: F811
    code, _, err = cli(serve_main, ["--bundle", str(tmp_path / "none"), "--port", "0"])
    assert code == 2 and "manifest.json not found" in err
    code, _, err = cli(serve_main, ["--bundle", str(bundles["torch"][0]), "--escalate", "0.5", "--port", "0"])
    assert code == 2 and "moskd export --escalate" in err
    code, _, err = cli(serve_main, [])
    assert code == 2 and "--bundle" in err
