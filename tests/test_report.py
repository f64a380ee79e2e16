"""Evaluation report: curves, cascades, operating points, CIs and the saved per-image arrays.

Expected values are worked out by hand (small arrays) or by a plain loop written here, never by
the function under test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference import curves as C
from inference.report import eval_dir, evaluate_run, load_eval, report_from_eval
from inference.summary import summarize
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")


def onehot_logits(preds, conf, classes=4) -> np.ndarray:
    """Logits whose argmax is `preds` and whose max softmax is exactly `conf` (the rest shared evenly)."""
    preds, conf = np.asarray(preds), np.asarray(conf, dtype=np.float64)
    p = np.repeat(((1 - conf) / (classes - 1))[:, None], classes, 1)
    p[np.arange(len(preds)), preds] = conf
    return np.log(p)


# ---------------------------------------------------------------- cascades


def test_cascade_escalates_strictly_below_the_threshold():
    labels = np.array([0, 1, 2, 3])
    a_pred, b_pred = np.array([0, 0, 2, 0]), np.array([0, 1, 1, 3])
    a_conf = np.array([0.9, 0.5, 0.6, 0.4])
    # threshold 0.5: images 3 (0.4 < 0.5) escalates; image 1 sits exactly on it and stays with a
    pred, cost = C.cascade_answer([a_pred, b_pred], [a_conf, np.ones(4)], [10.0, 100.0], 0.5)
    assert pred.tolist() == [0, 0, 2, 3] and cost.tolist() == [10, 10, 10, 110]
    curve = C.cascade_curve([a_pred, b_pred], [a_conf, np.ones(4)], [10.0, 100.0], labels, [0.0, 0.5, 0.55, C.ALWAYS])
    assert [p["accuracy"] for p in curve] == [0.5, 0.75, 1.0, 0.75]  # 0.55 also sends image 1 to b
    assert [p["macs_per_image"] for p in curve] == [10.0, 35.0, 60.0, 110.0]


def test_three_step_cascade_goes_on_with_the_same_threshold():
    a, b, c = np.array([1, 1, 1]), np.array([0, 2, 2]), np.array([0, 1, 2])
    conf_a, conf_b = np.array([0.3, 0.9, 0.3]), np.array([0.8, 0.8, 0.2])
    pred, cost = C.cascade_answer([a, b, c], [conf_a, conf_b, np.ones(3)], [1.0, 10.0, 100.0], 0.5)
    # image 0: a unsure -> b sure (0); image 1: a sure (1); image 2: a unsure -> b unsure -> c (2)
    assert pred.tolist() == [0, 1, 2] and cost.tolist() == [11, 1, 111]


def test_cascade_thresholds_start_at_never_and_end_at_always():
    t = C.cascade_thresholds(np.array([0.3, 0.99, 1.0, 0.7]))
    assert t[0] == 0.0 and t[-1] > 1.0 and t == sorted(t)


# ---------------------------------------------------------------- router, random, iso-accuracy


def test_router_curve_runs_from_all_dearest_to_all_cheapest():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 2))
    preds = np.stack([np.zeros(50, int), np.ones(50, int)], 1)  # cheap says 0, dear says 1
    labels = (rng.random(50) < 0.7).astype(int)  # the dear student is right on 70%
    curve = C.router_curve(scores, preds, labels, [10.0, 30.0], 1.0, 0.0, ["cheap", "dear"])
    assert len(curve) >= 11
    first, last = curve[0], curve[-1]
    assert first["share"]["dear"] == 1.0 and first["macs_per_image"] == 31.0
    assert first["accuracy"] == pytest.approx(labels.mean())
    assert last["share"]["cheap"] == 1.0 and last["macs_per_image"] == 11.0
    assert last["accuracy"] == pytest.approx(1 - labels.mean())
    # every point: accuracy and MACs are what its shares and the per-image routes imply
    for p in curve:
        assert p["macs_per_image"] == pytest.approx(1 + 10 * p["share"]["cheap"] + 30 * p["share"]["dear"])


def test_router_knob_charges_relative_macs():
    # scores favour the dear student by 0.2 on image 0 and 0.6 on image 1; relative costs 0.5 vs 1
    scores = np.array([[0.5, 0.7], [0.2, 0.8]])
    costs = np.array([0.5, 1.0])
    assert C.routes_at(scores, 0.0, 0.0, costs).tolist() == [1, 1]
    assert C.routes_at(scores, 0.5, 0.0, costs).tolist() == [0, 1]  # 0.2 - 0.25 < 0 < 0.6 - 0.25
    assert C.routes_at(scores, 2.0, 0.0, costs).tolist() == [0, 0]


def test_random_curve_and_iso_accuracy_by_hand():
    correct = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], dtype=bool)  # cheap 50%, dear 50%
    correct[2, 1] = True  # dear 75%
    curve = C.random_curve(correct, [10.0, 40.0], ["cheap", "dear"], steps=4)
    assert [p["accuracy"] for p in curve] == pytest.approx([0.5, 0.5625, 0.625, 0.6875, 0.75])
    assert [p["macs_per_image"] for p in curve] == pytest.approx([10, 17.5, 25, 32.5, 40])
    assert C.iso_accuracy(curve, 0.6) == pytest.approx(25.0)
    assert C.iso_accuracy(curve, 0.625) == pytest.approx(25.0)  # reached exactly counts
    assert C.iso_accuracy(curve, 0.8) is None


def test_paired_bootstrap_brackets_the_mean_and_is_exact_for_constant_differences():
    assert C.paired_bootstrap(np.full(30, 0.25)) == pytest.approx([0.25, 0.25])
    diff = np.r_[np.ones(60), np.zeros(40)]  # mean 0.6, sd of the mean ~ 0.049
    lo, hi = C.paired_bootstrap(diff)
    assert lo < 0.6 < hi and 0.15 < hi - lo < 0.23  # normal theory: 2 x 1.96 x 0.049 = 0.19 wide


def test_ece_by_hand():
    logits = onehot_logits([0, 1, 2, 3], [0.9, 0.9, 0.6, 0.6])
    labels = np.array([0, 0, 2, 2])  # bin (0.867, 0.933]: conf 0.9, acc 0.5; bin (0.6-ish]: conf 0.6, acc 0.5
    assert C.ece(logits, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


# ---------------------------------------------------------------- summarize


COSTS = {"teacher": {"role": "teacher", "arch": "t", "params": 100, "bytes": 400, "macs": 1000},
         "a": {"role": "student", "arch": "a", "params": 10, "bytes": 40, "macs": 100},
         "b": {"role": "student", "arch": "b", "params": 20, "bytes": 80, "macs": 300},
         "selector": {"role": "selector", "arch": "s", "params": 1, "bytes": 4, "macs": 5}}


def arrays(labels, preds: dict, conf: dict, scores, route=None) -> dict:
    out = {"labels": np.asarray(labels), "selector_scores": np.asarray(scores, dtype=np.float32)}
    out.update({f"logits_{k}": onehot_logits(v, conf.get(k, [0.9] * len(v))) for k, v in preds.items()})
    if route is not None:
        out["route"] = np.asarray(route)
    return out


def test_summarize_by_hand():
    # test: a right on 0, 1, 3; b right on 0, 2; teacher right everywhere
    test = arrays([0, 1, 2, 3], {"a": [0, 1, 0, 3], "b": [0, 0, 2, 0], "teacher": [0, 1, 2, 3]},
                  {"a": [0.9, 0.9, 0.4, 0.9], "b": [0.5, 0.95, 0.95, 0.95]},
                  [[0.9, 0.2], [0.8, 0.3], [0.1, 0.7], [0.6, 0.5]], route=[0, 0, 1, 0])
    # select: b is the better student there (3/4 vs 2/4), so b is "best single student" although a wins on test
    select = arrays([0, 1, 2, 3], {"a": [0, 1, 0, 0], "b": [0, 1, 2, 0], "teacher": [0, 1, 2, 3]},
                    {"a": [0.9, 0.9, 0.3, 0.3]}, [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    r = summarize(test, select, COSTS, names=["a", "b"], tie_margin=0.0, knob=0.0, escalate=None, heldout=None,
                  meta={"dataset": "x", "split": "test"})
    assert r["routed"]["accuracy"] == 1.0 and r["oracle"]["accuracy"] == 1.0
    assert r["routed"]["route_share"] == {"a": 0.75, "b": 0.25}
    assert r["routed"]["macs_per_image"] == pytest.approx(5 + 0.75 * 100 + 0.25 * 300)
    assert r["best_single_student"] == "b"  # chosen on select
    assert r["gap_closed"] == pytest.approx((1.0 - 0.5) / (1.0 - 0.5))
    assert r["baselines"]["always_a"] == 0.75 and r["baselines"]["always_b"] == 0.5
    assert r["baselines"]["random_same_share"] == pytest.approx(0.75 * 0.75 + 0.25 * 0.5)
    # more confident: image 0 a (0.9>0.5) right, 1 b (0.95) wrong, 2 b right, 3 b wrong
    assert r["baselines"]["most_confident"] == 0.5
    # the router on select's images costs 5 + (3 x 100 + 300) / 4 = 155: a>b fits with threshold 0.3
    # or less (0.9-conf images stay); the most accurate such point on select is picked
    same = r["cascade_same_macs"]
    assert same["select_budget_macs"] == pytest.approx(155.0)
    assert same["macs_per_image"] <= 1000
    cascade_ab = r["curves"]["cascade"]["a>b"]
    assert cascade_ab[0]["threshold"] == 0.0 and cascade_ab[0]["accuracy"] == 0.75
    assert cascade_ab[-1]["threshold"] > 1 and cascade_ab[-1]["accuracy"] == 0.5
    assert cascade_ab[-1]["macs_per_image"] == 400.0
    assert set(r["curves"]["cascade"]) == {"a>b", "a>teacher", "b>teacher", "a>b>teacher"}
    # exactly one right: images 1 (a), 2 (b), 3 (a); the routes pick all three right
    assert r["selector"]["exactly_one_right"] == 3 and r["selector"]["accuracy_on_exactly_one_right"] == 1.0
    assert r["iso_accuracy"]["teacher"]["cascade"] == pytest.approx(
        min(p["macs_per_image"] for c in r["curves"]["cascade"].values() for p in c if p["accuracy"] == 1.0))
    assert r["compression"]["a"]["macs_reduction"] == pytest.approx(0.9)
    assert r["compression"]["routed"]["bytes_reduction"] == pytest.approx(1 - 124 / 400)
    assert r["models"]["a"]["per_class_accuracy"] == [1.0, 1.0, 0.0, 1.0]
    assert r["models"]["b"]["agreement_with_teacher"] == 0.5
    lo, hi = r["ci95"]["routed_minus_best_student"]
    assert lo <= 0.5 <= hi


def test_gap_closed_is_null_when_oracle_equals_best_student():
    test = arrays([0, 1], {"a": [0, 1], "b": [0, 0], "teacher": [0, 1]}, {}, [[0.9, 0.1], [0.9, 0.1]], route=[0, 0])
    r = summarize(test, test, COSTS, names=["a", "b"], tie_margin=0.0, knob=0.0, escalate=None, heldout=None, meta={})
    assert r["gap_closed"] is None and r["routed"]["accuracy"] == 1.0


# ---------------------------------------------------------------- a real run


def test_report_is_recomputable_from_the_saved_arrays(trained_run):  # noqa: F811
    r = evaluate_run(trained_run, device="cpu")
    test = load_eval(eval_dir(trained_run) / "test.npz")
    y = test["labels"]
    assert r["num_images"] == len(y)
    for name, m in r["models"].items():  # plain numpy, independent of the report code
        if m["accuracy"] is not None:
            assert m["accuracy"] == pytest.approx(float((test[f"logits_{name}"].argmax(1) == y).mean()))
    names = r["routed"]["students"]
    answer = np.stack([test[f"logits_{k}"].argmax(1) for k in [*names, "teacher"]], 1)[np.arange(len(y)), test["route"]]
    assert r["routed"]["accuracy"] == pytest.approx(float((answer == y).mean()))
    assert test["selector_scores"].shape == (len(y), len(names))
    again = report_from_eval(trained_run)
    again["routed"]["max_abs_diff_vs_single_models"] = r["routed"]["max_abs_diff_vs_single_models"]
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(r))
    # DESIGN.md: curves with >= 11 router points, cascades from never to always escalating
    assert len(r["curves"]["router"]) >= 11
    for key, curve in r["curves"]["cascade"].items():
        first, *_, last = curve
        a, b = key.split(">")[0], key.split(">")[-1]
        assert first["threshold"] == 0 and first["accuracy"] == r["models"][a]["accuracy"], key
        assert first["macs_per_image"] == pytest.approx(r["models"][a]["macs"]), key
        assert last["threshold"] > 1 and last["accuracy"] == r["models"][b]["accuracy"], key
        assert set(r["ci95"]) == {"routed_minus_best_student", "routed_minus_random", "routed_minus_cascade_same_macs"}
