"""The inference command on a run whose selector splits images across both students
(conftest's `split_run`): routed predictions for files by the selector alone (no RUN/policy.json)
and by a policy file whose steps send some images to the teacher; the report's contract numbers
(the selector's own operating point, the deployed policy, every family's curve, the comparisons and
iso-accuracy points) against a plain reference; and the router's refusals of a student changed since
the selector was trained and of students disagreeing on the class count.

Every expected value comes from the fixture's reference rule (numpy) and the models' known answers,
never from the code under test. Each test works on its own copy of the fixture's run, so a policy
file or a report written here never reaches another test.
"""
from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from inference.cli import main as inference_main
from moskd.data import load_data
from tests.conftest import AnswerNet, save_answer_model

pytestmark = pytest.mark.usefixtures("one_thread")
LIMIT = 60
ROUTES = ("zero", "one", "teacher")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", limit=LIMIT).splits


@pytest.fixture(scope="module")
def digits_test(digits):
    return digits["test"]


def _pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images.numpy()):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(a[0], "L").save(paths[-1])
    return paths


def _probability(scale: float) -> float:
    """Softmax top probability of a one-hot logit margin `scale` over 10 classes."""
    return math.exp(scale) / (math.exp(scale) + 9)


def _policy(sr, t_zero: float, t_one: float, target: dict | None = None) -> dict:
    """The selector's pick at knob 0 and the card's margin, then max-softmax deferral to the teacher
    (zero's top probability is 0.978 on every image, one's 0.691: a threshold decides all or none)."""
    m = [float(sr.macs(i)) for i in range(3)]
    return {"family": "hybrid", "models": list(ROUTES), "macs": m,
            "entry": {"rule": "selector", "students": [0, 1], "knob": 0.0, "tie_margin": sr.M,
                      "costs": [m[0] / m[1], 1.0], "macs": float(sr.selector_macs)},
            "steps": [{"source": 0, "target": 2, "score": "max_softmax", "threshold": t_zero, "rule": None},
                      {"source": 1, "target": 2, "score": "max_softmax", "threshold": t_one, "rule": None}],
            "combine": "replace", "target": target or {}, "version": 1}


def _deferred(sr, images, t_zero: float, t_one: float) -> np.ndarray:
    """The reference route (0 zero, 1 one, 2 teacher) under _policy."""
    first = sr.routes(images)
    go = np.array([_probability(sr.scales[0]) < t_zero, _probability(sr.scales[1]) < t_one])
    return np.where(go[first], 2, first)


@pytest.mark.parametrize("with_policy", [False, True], ids=["selector-alone", "policy-file"])
def test_inference_rows_name_the_model_that_answered(split_run, digits_test, tmp_path, cli, with_policy):
    run = _copy(split_run, tmp_path)
    images = digits_test.images[:24]
    paths = _pngs(tmp_path / "in", images)
    out = tmp_path / "rows.jsonl"
    if with_policy:  # zero's images go on to the teacher, one's stay
        (run / "policy.json").write_text(json.dumps(_policy(split_run, 0.99, 0.68)))
    code, _, err = cli(inference_main, ["--run-dir", str(run), str(tmp_path / "in"), "--output", str(out),
                                        "--device", "cpu", "--batch-size", "10"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = _deferred(split_run, images.numpy(), 0.99, 0.68) if with_policy else split_run.routes(images.numpy())
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert [r["student"] for r in rows] == [ROUTES[k] for k in want]
    names = {r["student"] for r in rows}
    assert names == ({"teacher", "one"} if with_policy else {"zero", "one"})
    assert [r["class_index"] for r in rows] == [split_run.answers[k] for k in want]
    assert [r["class_name"] for r in rows] == [str(split_run.answers[k]) for k in want]
    assert [r["probability"] for r in rows] == pytest.approx([_probability(split_run.scales[k]) for k in want],
                                                             abs=1e-5)
    scores = split_run.scores(images.numpy())
    for r, s in zip(rows, scores):
        assert r["p_right"] == pytest.approx(dict(zip(split_run.names, s)), abs=1e-5) and r["error"] is None


def _report(run, cli, *flags):
    code, out, err = cli(inference_main, ["--run-dir", str(run), "--split", "test", "--limit", str(LIMIT),
                                          "--device", "cpu", *flags])
    assert code == 0, err
    # the fixture run was not made with --limit, so this cut of it goes beside the full report
    return json.loads((run / f"report-limit{LIMIT}" / "report.json").read_text())


def _bytes(i: int, sr) -> int:
    buf = io.BytesIO()
    torch.save(AnswerNet(10, 1, sr.answers[i], sr.scales[i], sr.widths[i]).state_dict(), buf)
    return buf.getbuffer().nbytes


@pytest.fixture(scope="module")
def fitted(split_run, tmp_path_factory):
    """A copy of the run reported with no policy file: the report fits and saves one."""
    run = tmp_path_factory.mktemp("fitted") / "run"
    shutil.copytree(split_run.path, run)
    inference_main(["--run-dir", str(run), "--split", "test", "--limit", str(LIMIT), "--device", "cpu"])
    return run, json.loads((run / f"report-limit{LIMIT}" / "report.json").read_text())


def test_report_contract_numbers_match_a_plain_reference(split_run, digits_test, fitted):
    _, r = fitted
    y = digits_test.targets.numpy()
    route = split_run.routes(digits_test.images.numpy())  # the selector alone at the card's knob (0)
    acc = {k: float(np.mean(y == split_run.answers[i])) for i, k in enumerate(ROUTES)}
    share = {k: float(np.mean(route == i)) for i, k in enumerate(ROUTES)}
    macs = {k: split_run.macs(i) for i, k in enumerate(ROUTES)}
    assert r["num_images"] == LIMIT and r["split"] == "test" and r["dataset"] == "digits"

    for i, k in enumerate(ROUTES):
        m = r["models"][k]
        assert (m["role"], m["arch"]) == ("teacher" if k == "teacher" else "student", "test_answer")
        assert (m["params"], m["macs"], m["bytes"]) == (10 * split_run.widths[i], macs[k], _bytes(i, split_run))
        assert m["accuracy"] == pytest.approx(acc[k])
    w = split_run.selector_width  # 3 convs, 3 batch norms (weight and bias), the head with its bias
    sel_params = 9 * w + 9 * w * 2 * w + 9 * 2 * w * 4 * w + 2 * (w + 2 * w + 4 * w) + 4 * w * 2 + 2
    assert (r["models"]["selector"]["params"], r["models"]["selector"]["macs"]) == (sel_params,
                                                                                   split_run.selector_macs)

    ro = r["routed"]  # the selector's own operating point: it picks a student, which answers
    assert ro["route_share"] == pytest.approx({k: share[k] for k in split_run.names})
    assert min(ro["route_share"].values()) >= 0.2  # the fixture really splits the split
    routed_acc = float(np.mean(y == np.array(split_run.answers)[route]))
    assert ro["accuracy"] == pytest.approx(routed_acc)
    assert ro["macs_per_image"] == pytest.approx(split_run.selector_macs + sum(share[k] * macs[k] for k in ROUTES))
    assert ro["escalate_threshold"] is None and ro["knob"] == 0.0 and ro["tie_margin"] == split_run.M
    assert ro["students"] == list(split_run.names)

    oracle = float(np.mean(np.isin(y, split_run.answers[:2])))
    assert r["oracle"]["accuracy"] == pytest.approx(oracle)
    b = r["baselines"]
    assert b["always_zero"] == pytest.approx(acc["zero"]) and b["always_one"] == pytest.approx(acc["one"])
    assert b["random_same_share"] == pytest.approx(sum(share[k] * acc[k] for k in ROUTES))  # its expectation
    assert b["most_confident"] == pytest.approx(acc["zero"])  # zero's margin 6 beats one's 3 on every image
    best = max(acc["zero"], acc["one"])
    assert r["gap_closed"] == pytest.approx((routed_acc - best) / (oracle - best))

    t_bytes = _bytes(2, split_run)
    for i, k in enumerate(ROUTES[:2]):
        c = r["compression"][k]
        assert c["params_reduction"] == pytest.approx(1 - split_run.widths[i] / split_run.widths[2])
        assert c["macs_reduction"] == pytest.approx(1 - macs[k] / macs["teacher"])
        assert c["bytes_reduction"] == pytest.approx(1 - _bytes(i, split_run) / t_bytes)


def test_report_fits_saves_and_runs_a_policy_chosen_on_select(split_run, digits, fitted):
    run, r = fitted
    saved = json.loads((run / f"report-limit{LIMIT}" / "policy.json").read_text())
    assert not (run / "policy.json").exists()  # a --limit cut never writes over the run's own files
    p = r["policy"]
    assert p["family"] == saved["family"] and p["target"] == saved["target"]
    assert p["dispatch_matches_replay"] == {"labels": 1.0, "routes": 1.0, "models": 1.0}
    ys = digits["select"].targets.numpy()
    sel_acc = {k: float(np.mean(ys == split_run.answers[i])) for i, k in enumerate(ROUTES)}
    assert r["select_targets"]["teacher"] == pytest.approx(sel_acc["teacher"])
    assert r["select_targets"]["best_student"] == pytest.approx(max(sel_acc["zero"], sel_acc["one"]))
    t = saved["target"]
    assert t["target"] == "teacher" and t["target_accuracy"] == pytest.approx(sel_acc["teacher"])
    assert t["select_images"] == len(ys) and t["learn_images"].startswith("none")  # --limit: no held-out part
    # zero alone already reaches the teacher's select accuracy, and no policy runs less than the cheapest
    # model on every image: the fewest MACs reaching the target are zero's own
    assert sel_acc["zero"] >= sel_acc["teacher"]
    assert t["select_macs_per_image"] == split_run.macs(0) and t["select_accuracy"] == pytest.approx(sel_acc["zero"])
    assert p["macs_per_image"] == split_run.macs(0) and p["route_share"]["zero"] == 1.0
    assert p["accuracy"] == pytest.approx(np.mean(digits["test"].targets.numpy() == split_run.answers[0]))
    assert sum(p["route_share"].values()) == pytest.approx(1.0)

    fams = r["curves"]["families"]  # one curve per family (no learned one: nothing left to learn on)
    assert set(fams) == {"router", "cascade", "hybrid", "cascade-committee", "hybrid-committee"}
    assert r["comparisons"]["learned_minus_max_softmax"] is None
    for fam, points in fams.items():
        assert points and all(pt["family"] == fam for pt in points)
        macs = [pt["select_macs_per_image"] for pt in points]
        accs = [pt["select_accuracy"] for pt in points]
        assert macs == sorted(macs) and all(a < b for a, b in zip(accs, accs[1:]))  # Pareto on select
        for pt in points:
            assert {"accuracy", "macs_per_image", "params"} <= set(pt)
    for name, by_family in r["iso_points"].items():
        assert name in ("teacher", "best_student")
        for row in by_family.values():
            assert row is None or row["select_accuracy"] >= r["select_targets"][name] - 1e-12
    cmp = r["comparisons"]["policy_minus_cascade_same_macs"]
    assert cmp["a"]["accuracy"] == pytest.approx(p["accuracy"]) and cmp["b"]["family"] == "cascade"
    assert cmp["b"]["select_macs_per_image"] <= cmp["a"]["select_macs_per_image"] + 1e-6
    assert cmp["difference"] == pytest.approx(cmp["a"]["accuracy"] - cmp["b"]["accuracy"])


@pytest.mark.parametrize("t_zero, t_one", [(0.99, 0.68), (0.97, 0.70)], ids=["zero-defers", "one-defers"])
def test_report_runs_the_policy_file_it_is_given(split_run, digits_test, tmp_path, cli, t_zero, t_one):
    run = _copy(split_run, tmp_path)
    folder = run / f"report-limit{LIMIT}"
    folder.mkdir()
    text = json.dumps(_policy(split_run, t_zero, t_one, {"rule": "by hand"}))
    (folder / "policy.json").write_text(text)
    r = _report(run, cli)
    assert (folder / "policy.json").read_text() == text  # reported as it is, not refitted
    y = digits_test.targets.numpy()
    first = split_run.routes(digits_test.images.numpy())
    route = _deferred(split_run, digits_test.images.numpy(), t_zero, t_one)
    right = y == np.array(split_run.answers)[route]
    went = route == 2
    p = r["policy"]
    assert p["family"] == "hybrid" and p["target"] == {"rule": "by hand"}
    assert p["accuracy"] == pytest.approx(right.mean())
    assert p["macs_per_image"] == pytest.approx(
        split_run.selector_macs + np.mean([split_run.macs(k) for k in first]) + went.mean() * split_run.macs(2))
    assert p["route_share"] == pytest.approx({k: float(np.mean(route == i)) for i, k in enumerate(ROUTES)})
    assert p["ran_share"] == pytest.approx({"zero": float(np.mean(first == 0)), "one": float(np.mean(first == 1)),
                                            "teacher": float(went.mean())})
    assert 0.2 < went.mean() < 0.8  # the teacher answered some images, not all
    assert p["minus_teacher"] == pytest.approx(right.mean() - np.mean(y == split_run.answers[2]))
    assert p["dispatch_matches_replay"] == {"labels": 1.0, "routes": 1.0, "models": 1.0}
    # the selector's own point stays the selector alone, whatever the deployed policy
    assert r["routed"]["route_share"] == pytest.approx({k: float(np.mean(first == i))
                                                        for i, k in enumerate(split_run.names)})
    assert r["comparisons"]["policy_minus_cascade_same_macs"]["a"]["accuracy"] == pytest.approx(right.mean())


def _copy(split_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(split_run.path, run)
    return run


def _png(tmp_path, image):
    path = tmp_path / "one.png"
    Image.fromarray(image.numpy()[0], "L").save(path)
    return path


def test_router_refuses_a_student_changed_after_the_selector_was_trained(split_run, digits_test, tmp_path, cli):
    run = _copy(split_run, tmp_path)
    card = load_data("digits").card()
    # same folder, same card, another width: the selector's labels describe a model no longer there
    save_answer_model(run / "students" / "one" / "best.pt", "student", card, 1, 3.0, 20,
                      distillation={"kd_loss": "kl"})
    code, out, err = cli(inference_main, ["--run-dir", str(run), str(_png(tmp_path, digits_test.images[0])),
                                          "--device", "cpu"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and out == ""
    assert str(run / "students" / "one" / "best.pt") in err and "changed since the selector was trained" in err
    assert f"{9 * 64 * 20:,} MACs" in err and f"{split_run.macs(1):,}" in err and "trainSelector" in err


def test_router_refuses_students_with_different_class_counts(split_run, digits_test, tmp_path, cli):
    run = _copy(split_run, tmp_path)
    card = load_data("digits").card()
    five = {**card, "num_classes": 5, "class_names": card["class_names"][:5]}
    save_answer_model(run / "students" / "one" / "best.pt", "student", five, 1, 3.0, split_run.widths[1],
                      distillation={"kd_loss": "kl"})
    code, out, err = cli(inference_main, ["--run-dir", str(run), str(_png(tmp_path, digits_test.images[0])),
                                          "--device", "cpu"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and out == ""
    assert "5 classes" in err and "has 10" in err and str(run / "students" / "one" / "best.pt") in err
