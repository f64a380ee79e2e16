"""`moskd serve --backend ray`: the same HTTP API, served by Ray Serve on a local Ray instance.

    moskd serve --bundle DIR --backend ray [--replicas N] [--max-batch 32] [--threads 1] ...

Needs the ray extra: pip install -e '.[ray]'. Deployments, each with --replicas replicas:

    model-<name>  one per model of the bundle (the selector when the routing policy starts there,
                  each model the policy can reach): loads the bundle, keeps that one program and runs it on the
                  normalised sub-batches it is sent, batched across callers with @serve.batch
                  (no waiting: whatever has queued while the last batch ran, up to --max-batch images)
    ingress       inference.serve.create_app (the single-process server's app: same routes, answers,
                  errors, batching and --gather) over a Bundle whose model programs are swapped for
                  calls to the model deployments (at most --max-batch images each), so the routing
                  is the bundle's own code, run unchanged

Every replica asks for a fraction of a CPU (the CPUs Ray sees, shared out over all replicas), so
the whole application fits on 2 cores. GET /health counts what the ingress replica that answers
it has served.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
from ray import serve

from inference.bundle import load_bundle
from inference.serve import PROG, check_port, create_app, window_batches
from moskd.batch_shapes import in_calls
from moskd.errors import MoskdError

APP_NAME = "moskd"


# ---------------------------------------------------------------- the bundle's model callables


def model_slots(bundle) -> list[str]:
    """Where the bundle keeps its model programs (callables: normalised float32 batch -> outputs):
    'selector' when the routing policy starts there, and 'programs.<k>' for each model the policy
    can reach (k = its route index); the policy itself stays in the ingress's Bundle."""
    slots = ["selector"] if bundle.selector is not None else []
    return slots + [f"programs.{k}" for k, p in enumerate(bundle.programs) if p is not None]


def get_model(bundle, slot: str):
    name, _, i = slot.partition(".")
    return getattr(bundle, name)[int(i)] if i else getattr(bundle, name)


def set_model(bundle, slot: str, model) -> None:
    name, _, i = slot.partition(".")
    if i:
        getattr(bundle, name)[int(i)] = model
    else:
        setattr(bundle, name, model)


def slot_label(bundle, slot: str) -> str:
    """A deployment's name for the slot: model-selector, model-<student name>, model-teacher."""
    name, _, i = slot.partition(".")
    return f"model-{bundle.route_names[int(i)] if i else name}"


def images_in(batch: list) -> int:
    return sum(len(x) for x in batch)


# ---------------------------------------------------------------- deployments


class ModelReplica:
    """One model of the bundle; calls from every ingress replica are batched together."""

    def __init__(self, bundle_dir: str, slot: str, threads: int | None, max_batch: int):
        self.model = get_model(load_bundle(bundle_dir, threads), slot)  # the other programs are dropped
        self.run.set_max_batch_size(max_batch)

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        return await self.run(x)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, batch_size_fn=images_in)
    async def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        out = await asyncio.to_thread(self.model, np.ascontiguousarray(x))  # the replica keeps taking calls
        return np.split(out, np.cumsum([len(a) for a in xs])[:-1])


class RemoteModel:
    """A model deployment as the bundle's program: array in, array out (called from the ingress's
    batch thread, never from its event loop)."""

    def __init__(self, handle):
        self.handle = handle

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.handle.remote(x).result()


@serve.ingress()
class Ingress:
    def __init__(self, bundle_dir: str, slots: list[str], handles: list, threads: int | None, max_batch: int,
                 max_bytes: int, invert: str, serving: dict, gather: int = 1):
        bundle = load_bundle(bundle_dir, threads)
        for slot, handle in zip(slots, handles):
            set_model(bundle, slot, in_calls(RemoteModel(handle), most=max_batch))
        self._asgi = create_app(bundle, max_batch, max_bytes, invert, serving=serving, gather=gather)

    def __serve_build_asgi_app__(self):
        return self._asgi


def build_app(bundle_dir: str, replicas: int = 1, max_batch: int = 32, max_bytes: int = 10_000_000,
              invert: str = "auto", threads: int | None = 1, cpus: float | None = None, gather: int = 1):
    """The bound Ray Serve application for a bundle. cpus: CPUs Ray has to share out (default: all
    it sees); each replica gets an equal fraction of them."""
    import ray

    bundle = load_bundle(bundle_dir, threads)
    slots = model_slots(bundle)
    total = cpus if cpus is not None else ray.cluster_resources().get("CPU", 1.0)
    per_replica = max(0.01, min(1.0, int(100 * total / (replicas * (len(slots) + 1))) / 100))
    options = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": per_replica},
               "logging_config": {"log_level": "WARNING"}}
    models = [serve.deployment(ModelReplica, name=slot_label(bundle, s), max_ongoing_requests=max(8, 4 * replicas),
                               **options).bind(str(bundle_dir), s, threads, max_batch) for s in slots]
    serving = {"backend": "ray", "replicas": replicas, "cpus_per_replica": per_replica,
               "deployments": ["ingress", *(slot_label(bundle, s) for s in slots)]}
    ingress = serve.deployment(Ingress, name="ingress", max_ongoing_requests=max(64, 4 * max_batch), **options)
    return ingress.bind(str(bundle_dir), slots, models, threads, max_batch, max_bytes, invert, serving, gather)


def start(bundle_dir: str, host: str, port: int, **kwargs):
    """Serve the bundle on host:port in the running Ray instance; returns once every replica is up."""
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    try:
        serve.run(build_app(bundle_dir, **kwargs), name=APP_NAME, route_prefix="/")
    except RuntimeError as e:  # a replica failed to start: its traceback is in Ray's logs
        raise SystemExit(f"{PROG}: error: Ray Serve could not deploy {bundle_dir} "
                         f"({str(e).strip().splitlines()[0][:200]}); see /tmp/ray/session_latest/logs/serve") from None


def _interrupt(*_):
    raise KeyboardInterrupt


def serve_main(a) -> int:
    """moskd serve --backend ray, its flags parsed and checked (inference.serve.main)."""
    import ray

    from inference.predict import open_bundle

    open_bundle(a.bundle, a.threads)  # a bad bundle: one line, before Ray starts
    port = check_port(a.host, a.port)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(include_dashboard=False, logging_level="warning", log_to_driver=False)
    except Exception as e:  # noqa: BLE001  Ray could not start here: say why in one line
        raise MoskdError(f"Ray did not start ({str(e).strip().splitlines()[0][:200]})") from None
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which sets its own: a terminated server shuts Ray down
    try:
        start(a.bundle, a.host, port, replicas=a.replicas, max_batch=a.max_batch, max_bytes=a.max_bytes,
              invert=a.invert, threads=a.threads or 1, gather=window_batches(a))
        print(f"{PROG}: {a.bundle} on http://{a.host}:{port} through Ray Serve, {a.replicas} replica(s) per "
              f"deployment (POST /predict, GET /health, GET /info)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()
