"""moskd serve --backend ray: Ray Serve on loopback (ray.init(num_cpus=2)) answers every digits test
image with the single-process server's label, student and MACs, and garbage with the same 4xx."""
from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from inference.bundle import load_bundle
from inference.serve import create_app
from moskd.data import load_data
from tests.test_export import bundles  # noqa: F401  (module fixture: torch and ONNX bundles of a tiny run)
from tests.test_selector import trained_run  # noqa: F401

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")
ROOT = Path(__file__).resolve().parent.parent


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(bundles):  # noqa: F811
    from inference.serve_ray import start

    path = bundles["onnx"][0]  # the selector alone routes: the selector and both students each get a deployment
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    try:
        port = free_port()
        start(str(path), "127.0.0.1", port, replicas=1, max_batch=16, max_bytes=20_000, threads=1)
        yield path, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_backend_answers_equal_the_single_process_server(ray_server):
    path, url = ray_server
    images = load_data("digits").splits["test"].images[:, 0].numpy()
    files = [("file", (f"{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    local = TestClient(create_app(load_bundle(path, 1), max_batch=16, max_bytes=20_000))
    with httpx.Client(base_url=url, timeout=120) as remote:
        for start in range(0, len(files), 60):
            chunk = files[start:start + 60]
            want, got = local.post("/predict", files=chunk), remote.post("/predict", files=chunk)
            assert want.status_code == got.status_code == 200, got.text
            key = lambda p: (p["file"], p["class_index"], p["class_name"], p["student"], p["macs"])  # noqa: E731
            assert [key(p) for p in got.json()["predictions"]] == [key(p) for p in want.json()["predictions"]]
            assert np.allclose([p["confidence"] for p in got.json()["predictions"]],
                               [p["confidence"] for p in want.json()["predictions"]], atol=1e-5)
        raw = {"content": png(images[0]), "headers": {"content-type": "image/png"}}
        (got,), (want,) = (c.post("/predict", **raw).json()["predictions"] for c in (remote, local))
        assert key(got) == key(want)
        info = remote.get("/info").json()
        assert info["serving"]["backend"] == "ray" and info["classes"] == local.get("/info").json()["classes"]
        assert len(info["serving"]["deployments"]) == 4  # ingress, selector, two students (the policy never reaches the teacher)


@pytest.mark.parametrize("body, ctype, status", [
    (b"", "image/png", 400),
    (b"this is not an image", "image/png", 400),
    (b"x" * 30_000, "image/png", 413),
    (b"hello", "text/plain", 415),
    (b"--zzz\r\nbroken", "multipart/form-data; boundary=zzz", 400),
])
def test_ray_backend_refuses_garbage_with_the_same_4xx(ray_server, body, ctype, status):
    path, url = ray_server
    local = TestClient(create_app(load_bundle(path, 1), max_batch=16, max_bytes=20_000))
    want = local.post("/predict", content=body, headers={"content-type": ctype})
    got = httpx.post(url + "/predict", content=body, headers={"content-type": ctype}, timeout=60)
    assert got.status_code == want.status_code == status and got.json() == want.json()
    assert httpx.get(url + "/health", timeout=60).status_code == 200
