"""Evaluation report: curves, cascades, operating points, CIs and the saved per-image arrays.

Expected values are worked out by hand (small arrays) or by a plain loop written here, never by
the function under test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference import curves as C
from inference.policy_fit import score, thresholds
from inference.report import eval_dir, evaluate_run, load_eval, report_from_eval
from inference.summary import summarize
from moskd.policy import (ALWAYS, Policy, Step, entry_routes, knob_grid, relative_costs, replay, router_policy,
                          softmax)
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")


def onehot_logits(preds, conf, classes=4) -> np.ndarray:
    """Logits whose argmax is `preds` and whose max softmax is exactly `conf` (the rest shared evenly)."""
    preds, conf = np.asarray(preds), np.asarray(conf, dtype=np.float64)
    p = np.repeat(((1 - conf) / (classes - 1))[:, None], classes, 1)
    p[np.arange(len(preds)), preds] = conf
    return np.log(p)


# ---------------------------------------------------------------- cascades and the selector, as policies

MODELS = ["a", "b", "teacher"]


def cascade(chain: list[int], ths: list[float], combine: str = "replace", macs=(10.0, 100.0, 1000.0)) -> Policy:
    steps = [Step(x, y, "max_softmax", t) for x, y, t in zip(chain, chain[1:], ths)]
    return Policy("cascade", MODELS, list(macs), {"rule": "fixed", "model": chain[0]}, steps, combine)


def test_cascade_escalates_strictly_below_the_threshold():
    labels = np.array([0, 1, 2, 3])
    arr = {"labels": labels, "logits_a": onehot_logits([0, 0, 2, 0], [0.9, 0.5, 0.6, 0.4]),
           "logits_b": onehot_logits([0, 1, 1, 3], [1 - 1e-9] * 4), "logits_teacher": onehot_logits([0] * 4, [0.5] * 4)}
    # threshold = image 1's own top probability (0.5 up to rounding, computed as the policy computes it):
    # image 3 (0.4) goes on; image 1 sits exactly on it and stays with a
    t = float(softmax(arr["logits_a"][1:2]).max())
    d = replay(cascade([0, 1], [t]), arr)
    assert d.pred.tolist() == [0, 0, 2, 3] and d.macs.tolist() == [10, 10, 10, 110]
    sweep = [score(cascade([0, 1], [th]), arr) for th in (0.0, t, 0.55, ALWAYS)]
    assert [p.accuracy for p in sweep] == [0.5, 0.75, 1.0, 0.75]  # 0.55 also sends image 1 to b
    assert [p.macs for p in sweep] == [10.0, 35.0, 60.0, 110.0]


def test_three_step_cascade_goes_on_step_by_step():
    arr = {"labels": np.array([0, 1, 2]), "logits_a": onehot_logits([1, 1, 1], [0.3, 0.9, 0.3]),
           "logits_b": onehot_logits([0, 2, 2], [0.8, 0.8, 0.2]), "logits_teacher": onehot_logits([0, 1, 2], [0.9] * 3)}
    d = replay(cascade([0, 1, 2], [0.5, 0.5], macs=(1.0, 10.0, 100.0)), arr)
    # image 0: a unsure -> b sure (0); image 1: a sure (1); image 2: a unsure -> b unsure -> teacher (2)
    assert d.pred.tolist() == [0, 1, 2] and d.macs.tolist() == [11, 1, 111]
    assert d.models.tolist() == [0b011, 0b001, 0b111] and d.route.tolist() == [1, 0, 2]


def test_committee_answers_with_the_mean_of_every_model_run_so_far():
    arr = {"labels": np.array([2, 0]), "logits_a": onehot_logits([0, 0], [0.4, 0.9]),
           "logits_b": onehot_logits([1, 1], [0.45, 0.45]), "logits_teacher": onehot_logits([2, 2], [0.5, 0.5])}
    d = replay(cascade([0, 1, 2], [0.5, 0.5], "mean"), arr)
    pa, pb, pt = (np.exp(arr[f"logits_{k}"][0]) for k in MODELS)
    # image 0: a (0.4) goes on; mean(a, b) tops at 0.425 < 0.5, goes on; answer = mean(a, b, teacher)
    assert d.probs[0] == pytest.approx((pa + pb + pt) / 3)
    assert d.pred.tolist() == [2, 0] and d.models.tolist() == [0b111, 0b001]


def test_cascade_thresholds_start_at_never_and_end_at_always():
    t = thresholds(np.array([0.3, 0.99, 1.0, 0.7]))
    assert t[0] == 0.0 and t[-1] > 1.0 and t == sorted(t)


def test_selector_policy_runs_from_all_dearest_to_all_cheapest():
    rng = np.random.default_rng(0)
    labels = (rng.random(50) < 0.7).astype(int)  # the dear student (always 1) is right on 70%
    arr = {"labels": labels, "selector_scores": rng.random((50, 2)).astype(np.float32),
           "logits_a": onehot_logits([0] * 50, [0.9] * 50), "logits_b": onehot_logits([1] * 50, [0.9] * 50),
           "logits_teacher": onehot_logits([0] * 50, [0.9] * 50)}
    grid = knob_grid(arr["selector_scores"], relative_costs([10.0, 30.0]))
    first, last = (score(router_policy(MODELS, [10.0, 30.0, 99.0], [0, 1], k, 0.0, 1.0), arr) for k in (grid[0],
                                                                                                      grid[-1]))
    assert len(grid) >= 11
    assert first.share["b"] == 1.0 and first.macs == 31.0 and first.accuracy == pytest.approx(labels.mean())
    assert last.share["a"] == 1.0 and last.macs == 11.0 and last.accuracy == pytest.approx(1 - labels.mean())


def test_selector_knob_charges_relative_macs():
    # scores favour the dear student by 0.2 on image 0 and 0.6 on image 1; relative costs 0.5 vs 1
    scores = np.array([[0.5, 0.7], [0.2, 0.8]])
    costs = np.array([0.5, 1.0])
    assert entry_routes(scores, 0.0, 0.0, costs).tolist() == [1, 1]
    assert entry_routes(scores, 0.0, 0.5, costs).tolist() == [0, 1]  # 0.2 - 0.25 < 0 < 0.6 - 0.25
    assert entry_routes(scores, 0.0, 2.0, costs).tolist() == [0, 0]


def test_random_curve_and_iso_accuracy_by_hand():
    correct = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], dtype=bool)  # cheap 50%, dear 50%
    correct[2, 1] = True  # dear 75%
    curve = C.random_curve(correct, [10.0, 40.0], ["cheap", "dear"], steps=4)
    assert [p["accuracy"] for p in curve] == pytest.approx([0.5, 0.5625, 0.625, 0.6875, 0.75])
    assert [p["macs_per_image"] for p in curve] == pytest.approx([10, 17.5, 25, 32.5, 40])


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
    deployed = Policy("cascade", MODELS, [100.0, 300.0, 1000.0], {"rule": "fixed", "model": 0},
                      [Step(0, 2, "max_softmax", 0.5)])
    r = summarize(test, select, COSTS, names=["a", "b"], tie_margin=0.0, knob=0.0, heldout=None,
                  meta={"dataset": "x", "split": "test"}, policy=deployed)
    # the deployed a > teacher at 0.5: only test image 2 (a's 0.4) goes on, and the teacher gets it right
    assert r["policy"]["accuracy"] == 1.0 and r["policy"]["macs_per_image"] == pytest.approx(100 + 1000 / 4)
    assert r["policy"]["route_share"] == {"a": 0.75, "b": 0.0, "teacher": 0.25}
    assert r["policy"]["minus_teacher"] == 0.0 and r["policy"]["minus_best_student"] == 0.5
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
    # a>b's select-Pareto points: a alone (select 2/4 at 100 MACs), then a's two unsure select images
    # on to b (3/4 at 250); always-b (3/4 at 400) is dominated and left out
    cascade_ab = r["curves"]["cascade"]["a>b"]
    assert [p["select_accuracy"] for p in cascade_ab] == [0.5, 0.75]
    assert cascade_ab[0]["threshold"] == 0.0 and cascade_ab[0]["accuracy"] == 0.75
    assert [p["select_macs_per_image"] for p in cascade_ab] == [100.0, 250.0]
    assert set(r["curves"]["cascade"]) == {"a>b", "a>teacher", "b>teacher", "a>b>teacher"}
    # exactly one right: images 1 (a), 2 (b), 3 (a); the routes pick all three right
    assert r["selector"]["exactly_one_right"] == 3 and r["selector"]["accuracy_on_exactly_one_right"] == 1.0
    # iso-accuracy is chosen on select: the cheapest cascade reaching the teacher's select accuracy (1.0)
    # is a > teacher sending a's two unsure select images on (100 + 2/4 x 1000), reported with its test MACs
    iso = r["iso_points"]["teacher"]["cascade"]
    assert iso["select_accuracy"] == 1.0 and iso["select_macs_per_image"] == pytest.approx(600.0)
    assert r["iso_accuracy"]["teacher"]["cascade"] == iso["macs_per_image"]
    assert r["compression"]["a"]["macs_reduction"] == pytest.approx(0.9)
    assert r["compression"]["routed"]["bytes_reduction"] == pytest.approx(1 - 124 / 400)
    assert r["models"]["a"]["per_class_accuracy"] == [1.0, 1.0, 0.0, 1.0]
    assert r["models"]["b"]["agreement_with_teacher"] == 0.5
    lo, hi = r["ci95"]["routed_minus_best_student"]
    assert lo <= 0.5 <= hi


def test_gap_closed_is_null_when_oracle_equals_best_student():
    test = arrays([0, 1], {"a": [0, 1], "b": [0, 0], "teacher": [0, 1]}, {}, [[0.9, 0.1], [0.9, 0.1]], route=[0, 0])
    only_a = Policy("single", MODELS, [100.0, 300.0, 1000.0], {"rule": "fixed", "model": 0})
    r = summarize(test, test, COSTS, names=["a", "b"], tie_margin=0.0, knob=0.0, heldout=None, meta={}, policy=only_a)
    assert r["gap_closed"] is None and r["routed"]["accuracy"] == 1.0


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def evaluated_run(trained_run, tmp_path_factory):  # noqa: F811
    """A copy of the tiny run (the evaluation writes RUN/policy.json, which later loads would route by)."""
    import shutil

    run = tmp_path_factory.mktemp("report_run") / "run"
    shutil.copytree(trained_run, run)
    return run


def test_report_is_recomputable_from_the_saved_arrays(evaluated_run):
    r = evaluate_run(evaluated_run, device="cpu")
    test = load_eval(eval_dir(evaluated_run) / "test.npz")
    y = test["labels"]
    assert r["num_images"] == len(y)
    for name, m in r["models"].items():  # plain numpy, independent of the report code
        if m["accuracy"] is not None:
            assert m["accuracy"] == pytest.approx(float((test[f"logits_{name}"].argmax(1) == y).mean()))
    names = r["routed"]["students"]
    assert r["policy"]["accuracy"] == pytest.approx(float((test["policy_pred"] == y).mean()))
    assert r["policy"]["macs_per_image"] == pytest.approx(float(test["policy_macs"].mean()))
    assert test["selector_scores"].shape == (len(y), len(names))
    assert (evaluated_run / "policy.json").is_file()
    again = report_from_eval(evaluated_run)
    again["policy"]["dispatch_matches_replay"] = r["policy"]["dispatch_matches_replay"]
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(r))
    # DESIGN.md: curves with >= 11 router points; each cascade's first select-Pareto point is its first model alone
    assert len(r["curves"]["router"]) >= 11
    for key, curve in r["curves"]["cascade"].items():
        a = key.split(">")[0]
        assert curve[0]["accuracy"] == r["models"][a]["accuracy"], key
        assert curve[0]["macs_per_image"] == pytest.approx(r["models"][a]["macs"]), key
    assert {"routed_minus_best_student", "routed_minus_random", "routed_minus_cascade_same_macs",
            "policy_minus_teacher", "policy_minus_best_student", "policy_minus_cascade_same_macs"} <= set(r["ci95"])
