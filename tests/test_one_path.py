"""One routing decision on every path (DESIGN.md, "Routing policy"): a run whose policy has a non-zero
cost knob, deferral steps to the teacher and committee answers gives the same route and label for
every test image through the report's replay of its saved arrays, `inference --run-dir` (every
--fast path), `inference --bundle` (torch and ONNX) and the HTTP server (--run-dir and --bundle).

The policy is written by hand, its knob and threshold halfway across the widest gaps between the
images' own switch points, so that no image sits within float noise of a decision."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from inference.bundle import load_bundle
from inference.export import export_run
from inference.predict import load_predictor
from inference.cli import main as inference_main
from inference.router import load_policy
from inference.report import eval_dir, evaluate_run, load_eval, report_from_eval
from moskd.data import load_data
from moskd.policy import Policy, Step, relative_costs, softmax
from moskd.atomic import write_json
from moskd.run import RunDir
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")


def widest_gap(values: np.ndarray) -> float:
    """The midpoint of the widest gap between neighbouring values in their middle half."""
    v = np.unique(values)
    lo, hi = len(v) // 4, max(len(v) // 4 + 2, 3 * len(v) // 4)
    v = v[lo:hi]
    i = int(np.diff(v).argmax())
    return float((v[i] + v[i + 1]) / 2)


@pytest.fixture(scope="module")
def policy_run(trained_run, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("one_path") / "run"
    shutil.copytree(trained_run, run)
    evaluate_run(run, device="cpu")  # the saved arrays (and a fitted policy, replaced below)
    test = load_eval(eval_dir(run) / "test.npz")
    fitted = load_policy(RunDir(run))
    models, macs = fitted.models, fitted.macs
    costs = relative_costs(macs[:2])
    s = test["selector_scores"].astype(np.float64)
    card = RunDir(run).load_selector()["card"]
    tie = float(card["tie_margin"])
    knob = widest_gap((s[:, 1] - s[:, 0] - tie) / (costs[1] - costs[0]))  # each image's switch point
    conf = np.concatenate([softmax(test[f"logits_{m}"]).max(1) for m in models[:2]])
    threshold = widest_gap(conf)
    policy = Policy("hybrid-committee", models, macs,
                    {"rule": "selector", "students": [0, 1], "knob": knob, "tie_margin": tie,
                     "costs": costs.tolist(), "macs": float(card["selector_macs"])},
                    [Step(0, 2, "max_softmax", threshold), Step(1, 2, "max_softmax", threshold)], "mean")
    write_json(RunDir(run).report().policy, policy.to_dict())
    report_from_eval(run)  # the replay of that policy on the saved arrays
    return run, policy


@pytest.fixture(scope="module")
def expected(policy_run):
    run, policy = policy_run
    from inference.report import with_policy

    test = with_policy(load_eval(eval_dir(run) / "test.npz"), policy)
    route, pred = test["route"], test["policy_pred"]
    assert policy.entry["knob"] != 0
    # every route really used, committee answers really combined (some images ran two models)
    assert set(np.bincount(route, minlength=3).nonzero()[0]) == {0, 1, 2}
    assert ((test["policy_models"] & 0b011) != 0).all() and (test["policy_models"] >= 0b100).sum() > 0
    # the committee's answer probability per image: the mean softmax of every model its chain ran
    probs = np.stack([softmax(test[f"logits_{m}"].astype(np.float64)) for m in policy.models])  # (M, N, C)
    ran = np.stack([(test["policy_models"] >> k) & 1 for k in range(len(policy.models))]).astype(float)  # (M, N)
    answer = (probs * ran[:, :, None]).sum(0) / ran.sum(0)[:, None]
    return [policy.models[r] for r in route], pred.tolist(), answer[np.arange(len(pred)), pred].tolist()


@pytest.fixture(scope="module")
def test_pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    images = load_data("digits").splits["test"].images.numpy()
    for i, a in enumerate(images):
        Image.fromarray(a[0], "L").save(folder / f"{i:03d}.png")
    return folder, images


@pytest.mark.parametrize("fast", ["eager", "fold", "fold+cl"])
def test_inference_run_dir_follows_the_policy(policy_run, expected, test_pngs, tmp_path, cli, fast):
    run, _ = policy_run
    out = tmp_path / "rows.jsonl"
    code, _, err = cli(inference_main, ["--run-dir", str(run), str(test_pngs[0]), "--output", str(out),
                                        "--fast", fast, "--device", "cpu", "--quiet"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["student"] for r in rows] == expected[0]
    assert [r["class_index"] for r in rows] == expected[1]
    # each answer is the models' own committee: a model answering in another's place shows here
    assert np.allclose([r["probability"] for r in rows], expected[2], atol=1e-3)


@pytest.fixture(scope="module")
def bundles(policy_run, tmp_path_factory):
    run, policy = policy_run
    root = tmp_path_factory.mktemp("policy_bundles")
    for fmt in ("torch", "onnx"):
        export_run(run, root / fmt, fmt, log=lambda *_: None)
    return root


@pytest.mark.parametrize("fmt", ["torch", "onnx"])
def test_bundle_follows_the_policy(policy_run, expected, bundles, test_pngs, fmt):
    _, policy = policy_run
    manifest = json.loads((bundles / fmt / "manifest.json").read_text())
    assert manifest["policy"] == policy.to_dict()  # copied verbatim
    b = load_bundle(bundles / fmt)
    out = b.run(test_pngs[1])
    assert [b.route_names[r] for r in out.routes] == expected[0]
    assert out.logits.argmax(1).tolist() == expected[1]
    assert b.info()["policy"] == policy.to_dict()


@pytest.mark.parametrize("source", ["run", "torch", "onnx"])
def test_server_follows_the_policy(policy_run, expected, bundles, test_pngs, source):
    from fastapi.testclient import TestClient

    from inference.serve import create_app

    run, policy = policy_run
    predictor = (load_predictor(str(run), device="cpu") if source == "run"
                 else load_predictor(bundle=str(bundles / source)))
    files = sorted(test_pngs[0].iterdir())
    got_routes, got_labels = [], []
    with TestClient(create_app(predictor)) as client:
        assert client.get("/info").json()["policy"] == policy.to_dict()
        for start in range(0, len(files), 64):
            chunk = files[start:start + 64]
            r = client.post("/predict", files=[("file", (f.name, f.read_bytes(), "image/png")) for f in chunk])
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            got_routes += [p["student"] for p in preds]
            got_labels += [p["class_index"] for p in preds]
    assert got_routes == expected[0] and got_labels == expected[1]


