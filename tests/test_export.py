"""Deployment bundle: export in both formats, the bundle equals the run, it runs in a fresh process
without training code (ONNX: without torch), bad bundles. (A policy with deferral, committees and the
teacher on every path: tests/test_one_path.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.bundle import load_bundle
from inference.export import export_run
from inference.cli import export_main
from inference.cli import main as inference_main
from inference.router import load_router
from moskd.data import load_data
from moskd.policy import entry_routes, knob_grid
from moskd.views import normalize
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
TRAINING = ("selector", "students", "teacher", "timm", "torchvision")
CORE_ALLOWED = {"moskd", "moskd.policy", "moskd.batch_shapes", "moskd.ort"}  # the numpy-only routing policy, power-of-two batches and the onnxruntime session; no training code


@pytest.fixture(scope="session")
def bundles(trained_run, tmp_path_factory):  # noqa: F811
    """Both formats of the tiny run, which has no RUN/policy.json: the selector alone routes."""
    root = tmp_path_factory.mktemp("bundles")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_run(trained_run, root / "torch", "torch", log=lambda *_: None)
        export_run(trained_run, root / "onnx", "onnx", log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return {"torch": (root / "torch", None), "onnx": (root / "onnx", None)}


def _test_batch(run, n: int | None = None) -> torch.Tensor:
    images = load_data("digits").splits["test"].images[:n]
    return normalize(images, torch.tensor(run.card["mean"]), torch.tensor(run.card["std"]))


def test_manifest_names_every_model_file_macs_and_the_policy(bundles, trained_run):  # noqa: F811
    for fmt, (path, _) in bundles.items():
        m = json.loads((path / "manifest.json").read_text())
        run = load_router(trained_run)
        assert m["format"] == fmt and m["class_names"] == run.class_names
        assert m["input_size"] == run.card["input_size"] and m["mean"] == run.card["mean"]
        assert m["students"] == run.router.names  # route order
        assert m["policy"] == run.router.policy.to_dict() and m["policy"]["family"] == "router"
        assert m["policy"]["entry"]["knob"] == run.card["knob"]  # the selector's operating knob travels
        assert [e["name"] for e in m["models"]] == run.router.names  # the teacher is not reached: not bundled
        assert [e["macs"] for e in m["models"]] == [s.macs for s in run.students]
        entries = [m["selector"], *m["models"]]
        assert all((path / e["file"]).is_file() and e["file"].endswith(".pt2" if fmt == "torch" else ".onnx")
                   for e in entries)
        assert not list(path.glob("*.pt"))  # no checkpoints travel with the bundle


@pytest.mark.parametrize("fmt", ["torch", "onnx"])
def test_bundle_equals_the_run_on_the_test_split(bundles, trained_run, fmt):  # noqa: F811
    path, _ = bundles[fmt]
    run = load_router(trained_run)
    images = load_data("digits").splits["test"].images  # (N, 1, 8, 8) uint8, the whole split
    want = run.router(_test_batch(run))
    got = load_bundle(path).run(images.numpy())
    assert got.routes.tolist() == want.routes.tolist()
    assert got.logits.argmax(1).tolist() == want.logits.argmax(1).tolist()
    assert np.abs(got.logits - want.logits.numpy()).max() <= 1e-4
    assert np.abs(got.scores - want.scores.numpy()).max() <= 1e-5


def _png(path: Path, a: np.ndarray) -> Path:
    Image.fromarray(a, "L").save(path)
    return path


@pytest.mark.parametrize("fmt", ["torch", "onnx"])
def test_bundle_runs_in_a_fresh_process_without_training_code(bundles, trained_run, tmp_path, fmt):  # noqa: F811
    path, _ = bundles[fmt]
    images = load_data("digits").splits["test"].images[:12, 0].numpy()
    files = [_png(tmp_path / f"{i}.png", a) for i, a in enumerate(images)]
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import numpy as np
        from inference.bundle import load_bundle
        from inference.images import read_image_array
        b = load_bundle({str(path)!r})
        x = np.stack([read_image_array(Path(p), b.card) for p in {[str(f) for f in files]!r}])
        out = b.run(x)
        loaded = sorted({{m.split(".")[0] for m in sys.modules}})
        core = sorted(m for m in sys.modules if m.split(".")[0] == "moskd")
        print(json.dumps({{"labels": out.logits.argmax(1).tolist(), "routes": out.routes.tolist(), "modules": loaded,
                          "core": core}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert not set(TRAINING) & set(got["modules"]), got["modules"]
    assert set(got["core"]) <= CORE_ALLOWED, got["core"]
    if fmt == "onnx":
        assert "torch" not in got["modules"] and "onnxruntime" in got["modules"]
    run = load_router(trained_run)
    want = run.router(normalize(torch.from_numpy(images[:, None]), torch.tensor(run.card["mean"]),
                                torch.tensor(run.card["std"])))
    assert got["labels"] == want.logits.argmax(1).tolist() and got["routes"] == want.routes.tolist()


def test_inference_bundle_equals_inference_run_dir(bundles, trained_run, tmp_path, cli):  # noqa: F811
    images = load_data("digits").splits["test"].images[:10, 0].numpy()
    (tmp_path / "in").mkdir()
    for i, a in enumerate(images):
        _png(tmp_path / "in" / f"{i}.png", a)
    rows = {}
    for name, flags in (("run", ["--run-dir", str(trained_run)]), ("bundle", ["--bundle", str(bundles["torch"][0])])):
        out = tmp_path / f"{name}.jsonl"
        code, _, err = cli(inference_main, [*flags, str(tmp_path / "in"), "--output", str(out), "--device", "cpu"])
        assert code == 0, err
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows["run"]) == len(images)
    for a, b in zip(rows["run"], rows["bundle"]):
        assert (a["path"], a["class_index"], a["student"]) == (b["path"], b["class_index"], b["student"])
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_bad_bundle_and_bad_export_are_one_line(bundles, trained_run, tmp_path, cli):  # noqa: F811
    img = _png(tmp_path / "x.png", load_data("digits").splits["test"].images[0, 0].numpy())
    code, _, err = cli(inference_main, ["--bundle", str(tmp_path / "nope"), str(img)])
    assert code == 2 and "manifest.json not found" in err and "moskd export" in err and "Traceback" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((bundles["torch"][0] / "manifest.json").read_text())
    code, _, err = cli(inference_main, ["--bundle", str(broken), str(img)])
    assert code == 2 and "selector.pt2 not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(export_main, ["--run-dir", str(trained_run), "--out", str(broken)])
    assert code == 2 and "--force" in err and (broken / "manifest.json").is_file()  # nothing lost
    code, _, err = cli(export_main, ["--run-dir", str(tmp_path / "no-run"), "--out", str(tmp_path / "b")])
    assert code == 2 and "no such run directory" in err and "--run-dir" in err and not (tmp_path / "b").exists()


def _binary(n: int) -> list[int]:
    """n's binary decomposition, largest part first (written out here, not taken from the code under test)."""
    return [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


def test_pow2_batches_bundle_runs_power_of_two_chunks_in_the_whole_sub_batch_regime(bundles, tmp_path,
                                                                                   monkeypatch):
    """inference --bundle's setting: each ONNX program gets its sub-batch in power-of-two chunks, the
    answers equal the one-batch bundle's, and the batch regime (small_batch: the batch-1 choice for at
    most `up_to` images) is chosen on the whole sub-batch, so a 37-image sub-batch's chunk of 1 still
    runs the large-batch program."""
    import shutil

    import inference.runtimes

    path = tmp_path / "bundle"
    shutil.copytree(bundles["onnx"][0], path)
    images = load_data("digits").splits["test"].images.numpy()
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["policy"]["entry"]  # a knob that splits the images between the students
    scores = load_bundle(path).run(images).scores
    costs = np.asarray(entry["costs"])
    entry["knob"] = min(knob_grid(scores, costs, entry["tie_margin"]),
                        key=lambda k: abs(entry_routes(scores, entry["tie_margin"], k, costs).mean() - 0.5))
    for e in manifest["models"]:  # a second regime per student; the fake below opens it with onnxruntime too
        e["small_batch"] = {"runtime": "openvino", "precision": "fp32", "up_to": 4}
    (path / "manifest.json").write_text(json.dumps(manifest))
    calls: list[tuple[str, str, int]] = []  # (file, runtime asked for, batch size)
    open_program = inference.runtimes.open_program

    def logged(file, runtime="onnxruntime", precision="fp32", threads=None):
        program = open_program(file, "onnxruntime", precision, threads)
        return lambda x: calls.append((Path(file).stem, runtime, len(x))) or program(x)

    monkeypatch.setattr(inference.runtimes, "open_program", logged)
    whole = load_bundle(path).run(images)
    whole_calls = list(calls)
    calls.clear()
    chunked = load_bundle(path, pow2_batches=True).run(images)
    assert chunked.routes.tolist() == whole.routes.tolist()
    assert np.abs(chunked.logits - whole.logits).max() <= 1e-5 and np.abs(chunked.scores - whole.scores).max() <= 1e-5
    for name in ["selector", *manifest["students"]]:
        one = [(rt, n) for f, rt, n in whole_calls if f == name]
        assert len(one) == 1, (name, whole_calls)  # one batch per program without pow2_batches
        runtime, n = one[0]
        assert [(rt, m) for f, rt, m in calls if f == name] == [(runtime, m) for m in _binary(n)], name
    student_sizes = [n for f, _, n in whole_calls if f != "selector"]
    assert any(n > 4 and n & (n - 1) for n in student_sizes)  # some sub-batch really was split, above up_to
