"""The routing policy (moskd.policy, numpy only) and its fitting (inference.policy_fit).

decide(): input order, which model runs on which images (each at most once, in route order), the
strict deferral comparison, chains, committees, bit masks and MACs; the selector entry rule with its
tie margin and cost knob; the knob grid; the JSON round trip; the refusals of Policy.check; the
learned rule's features and gain. policy_fit: choose_point, pareto, fit_rule on a planted signal,
fit_policy on synthetic arrays, and --target parsing.

Every expected value is worked out by hand (probabilities chosen so that the arithmetic is exact or
written out) or by a plain per-image reference written here, never taken from the code under test.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.policy_fit import (Scored, Setup, choose_point, fit_policy, fit_rule, pareto, refit_thresholds,
                                  resolve_target)
from moskd.errors import MoskdError
from moskd.policy import (ALWAYS, TOP, Policy, PolicyError, Step, decide, entry_routes, features,
                          knob_grid, learned_gain, relative_costs, replay, router_policy)

MODELS = ["a", "b", "c"]
MACS = [10.0, 20.0, 100.0]

# per-model probabilities of six images over three classes (logits = log p, so softmax(logits) = p)
P = {
    0: np.array([[0.90, 0.05, 0.05], [0.40, 0.30, 0.30], [0.20, 0.70, 0.10],
                 [0.50, 0.25, 0.25], [0.10, 0.10, 0.80], [0.34, 0.33, 0.33]]),
    1: np.array([[0.20, 0.60, 0.20], [0.30, 0.60, 0.10], [0.30, 0.30, 0.40],
                 [0.10, 0.85, 0.05], [0.50, 0.30, 0.20], [0.45, 0.10, 0.45]]),
    2: np.array([[0.10, 0.10, 0.80], [0.05, 0.05, 0.90], [0.60, 0.30, 0.10],
                 [0.20, 0.20, 0.60], [0.30, 0.40, 0.30], [0.60, 0.20, 0.20]]),
}
LOGITS = {k: np.log(p) for k, p in P.items()}


class Recorder:
    """run_model that answers from fixed per-model logits and records every call's (model, images)."""

    def __init__(self, logits: dict):
        self.logits, self.calls = logits, []

    def __call__(self, k: int, idx: np.ndarray) -> np.ndarray:
        self.calls.append((k, np.asarray(idx).tolist()))
        return self.logits[k][idx]


def fixed(steps=(), combine="replace", entry=0, models=MODELS, macs=MACS) -> Policy:
    return Policy("test", list(models), list(macs), {"rule": "fixed", "model": entry}, list(steps), combine)


# ---------------------------------------------------------------- decide


def test_a_two_step_chain_runs_each_model_once_on_the_images_that_reach_it():
    # a's top probabilities: .9 .4 .7 .5 .8 .34 -> below .6 go on to b: images 1, 3, 5
    # b's top probabilities there: .6 .85 .45 -> below .7 go on to c: images 1, 5
    rec = Recorder(LOGITS)
    d = decide(fixed([Step(0, 1, "max_softmax", 0.6), Step(1, 2, "max_softmax", 0.7)]), 6, rec)
    assert rec.calls == [(0, [0, 1, 2, 3, 4, 5]), (1, [1, 3, 5]), (2, [1, 5])]
    want = np.stack([P[0][0], P[2][1], P[0][2], P[1][3], P[0][4], P[2][5]])  # replace: the last model's answer
    np.testing.assert_allclose(d.probs, want, rtol=0, atol=1e-12)
    assert d.route.tolist() == [0, 2, 0, 1, 0, 2]
    assert d.models.tolist() == [0b001, 0b111, 0b001, 0b011, 0b001, 0b111]
    assert d.macs.tolist() == [10, 130, 10, 30, 10, 130]
    assert d.entry.tolist() == [0] * 6
    assert d.pred.tolist() == [0, 2, 1, 1, 2, 0]


def test_committee_answers_are_the_mean_of_every_model_run_so_far():
    # under "mean" the next step reads the committee's answer: after b, image 3's answer is
    # (.5+.1, .25+.85, .25+.05)/2 = (.3, .55, .15), top .55 < .7, so it goes on too (replace: .85, stops)
    rec = Recorder(LOGITS)
    d = decide(fixed([Step(0, 1, "max_softmax", 0.6), Step(1, 2, "max_softmax", 0.7)], "mean"), 6, rec)
    assert rec.calls == [(0, [0, 1, 2, 3, 4, 5]), (1, [1, 3, 5]), (2, [1, 3, 5])]
    want = np.array([
        [0.90, 0.05, 0.05],
        [0.75 / 3, 0.95 / 3, 1.30 / 3],  # (.4+.3+.05, .3+.6+.05, .3+.1+.9) / 3
        [0.20, 0.70, 0.10],
        [0.80 / 3, 1.30 / 3, 0.90 / 3],  # (.5+.1+.2, .25+.85+.2, .25+.05+.6) / 3
        [0.10, 0.10, 0.80],
        [1.39 / 3, 0.63 / 3, 0.98 / 3],  # (.34+.45+.6, .33+.1+.2, .33+.45+.2) / 3
    ])
    np.testing.assert_allclose(d.probs, want, rtol=0, atol=1e-12)
    assert d.route.tolist() == [0, 2, 0, 2, 0, 2]
    assert d.models.tolist() == [1, 7, 1, 7, 1, 7] and d.macs.tolist() == [10, 130, 10, 130, 10, 130]


def test_a_committee_of_two_after_one_step():
    rec = Recorder(LOGITS)
    d = decide(fixed([Step(0, 2, "max_softmax", 0.45)], "mean"), 6, rec)  # a's tops below .45: images 1, 5
    assert rec.calls == [(0, [0, 1, 2, 3, 4, 5]), (2, [1, 5])]
    np.testing.assert_allclose(d.probs[1], [0.225, 0.175, 0.6], atol=1e-12)  # (.4+.05, .3+.05, .3+.9) / 2
    np.testing.assert_allclose(d.probs[5], [0.47, 0.265, 0.265], atol=1e-12)  # (.34+.6, .33+.2, .33+.2) / 2
    np.testing.assert_allclose(d.probs[[0, 2, 3, 4]], P[0][[0, 2, 3, 4]], atol=1e-12)
    assert d.route.tolist() == [0, 2, 0, 0, 0, 2] and d.models.tolist() == [1, 5, 1, 1, 1, 5]
    assert d.macs.tolist() == [10, 110, 10, 10, 10, 110]  # b never ran: it costs nothing


def test_input_order_is_kept_whatever_the_route():
    # each image's logits are unique, so an answer put back in the wrong row would show
    rng = np.random.default_rng(0)
    logits = {k: rng.normal(size=(40, 4)) * 3 for k in range(3)}
    ref = np.exp(logits[0] - logits[0].max(1, keepdims=True))
    top = (ref / ref.sum(1, keepdims=True)).max(1)
    t = float(np.median(top))
    d = decide(fixed([Step(0, 2, "max_softmax", t)]), 40, Recorder(logits))
    for i in range(40):
        k = 2 if top[i] < t else 0
        z = logits[k][i] - logits[k][i].max()
        np.testing.assert_allclose(d.probs[i], np.exp(z) / np.exp(z).sum(), atol=1e-12)
        assert d.route[i] == k
    assert 0 < (d.route == 2).sum() < 40


def test_threshold_zero_never_defers_and_always_always_does():
    logits = {0: np.array([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 0.0]]),  # top 1.0 (in float64), 1/3, ...
              1: np.array([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])}
    two = dict(models=["a", "b"], macs=[1.0, 4.0])
    rec = Recorder(logits)
    d = decide(fixed([Step(0, 1, "max_softmax", 0.0)], **two), 3, rec)
    assert rec.calls == [(0, [0, 1, 2])] and d.route.tolist() == [0, 0, 0] and d.pred.tolist() == [0, 0, 0]
    rec = Recorder(logits)
    d = decide(fixed([Step(0, 1, "max_softmax", ALWAYS)], **two), 3, rec)
    assert rec.calls == [(0, [0, 1, 2]), (1, [0, 1, 2])]  # even the image whose top probability is 1.0
    assert d.route.tolist() == [1, 1, 1] and d.pred.tolist() == [1, 2, 0] and d.macs.tolist() == [5, 5, 5]
    assert ALWAYS > 1


def test_the_comparison_is_strict():
    # softmax of equal logits is exactly 1/2: a score equal to the threshold does not defer
    logits = {0: np.zeros((2, 2)), 1: np.array([[0.0, 3.0], [0.0, 3.0]])}
    two = dict(models=["a", "b"], macs=[1.0, 4.0])
    rec = Recorder(logits)
    assert decide(fixed([Step(0, 1, "max_softmax", 0.5)], **two), 2, rec).route.tolist() == [0, 0]
    assert rec.calls == [(0, [0, 1])]
    d = decide(fixed([Step(0, 1, "max_softmax", float(np.nextafter(0.5, 1.0)))], **two), 2, Recorder(logits))
    assert d.route.tolist() == [1, 1]
    # and with a top probability of exactly 1.0, threshold 1.0 does not defer
    sure = {0: np.array([[100.0, 0.0]]), 1: np.array([[0.0, 1.0]])}
    assert decide(fixed([Step(0, 1, "max_softmax", 1.0)], **two), 1, Recorder(sure)).route.tolist() == [0]


def test_a_fixed_entry_at_a_later_model_and_unreached_models_never_run():
    rec = Recorder(LOGITS)
    d = decide(fixed([Step(0, 2, "max_softmax", ALWAYS)], entry=1), 6, rec)  # the step from a is unreachable
    assert rec.calls == [(1, [0, 1, 2, 3, 4, 5])]
    np.testing.assert_allclose(d.probs, P[1], atol=1e-12)
    assert d.route.tolist() == [1] * 6 and d.models.tolist() == [2] * 6 and d.macs.tolist() == [20] * 6


def test_the_selector_entry_charges_its_macs_and_picks_the_first_model():
    pol = Policy("hybrid", MODELS, MACS, {"rule": "selector", "students": [0, 1], "knob": 0.0, "tie_margin": 0.05,
                                          "costs": [0.5, 1.0], "macs": 7.0},
                 [Step(0, 2, "max_softmax", 0.6), Step(1, 2, "max_softmax", 0.7)])
    # scores: image 0 -> b (.9 vs .6), 1 -> a (near tie), 2 -> b, 3 -> a, 4 -> a, 5 -> b
    scores = np.array([[0.6, 0.9], [0.80, 0.83], [0.1, 0.2], [0.9, 0.1], [0.5, 0.5], [0.3, 0.7]], dtype=np.float32)
    rec = Recorder(LOGITS)
    d = decide(pol, 6, rec, scores)
    # a on 1, 3, 4: tops .4 .5 .8 -> 1, 3 on to c; b on 0, 2, 5: tops .6 .4 .45 -> 0, 2, 5 on to c
    assert rec.calls == [(0, [1, 3, 4]), (1, [0, 2, 5]), (2, [0, 1, 2, 3, 5])]
    assert d.entry.tolist() == [1, 0, 1, 0, 0, 1]
    assert d.route.tolist() == [2, 2, 2, 2, 0, 2]
    assert d.models.tolist() == [0b110, 0b101, 0b110, 0b101, 0b001, 0b110]
    assert d.macs.tolist() == [127, 117, 127, 117, 17, 127]
    np.testing.assert_allclose(d.probs[4], P[0][4], atol=1e-12)
    with pytest.raises(PolicyError, match="scores"):
        decide(pol, 6, Recorder(LOGITS))


def test_a_learned_step_defers_when_the_gain_is_high():
    # gain = sigmoid(5 - 10 * top): top .9 -> sigmoid(-4), score .982; top .4 -> sigmoid(1), score .269
    coef = [-10.0] + [0.0] * (TOP + 2 + 3 - 1)
    rule = {"coef": coef, "intercept": 5.0, "mean": [0.0] * len(coef), "scale": [1.0] * len(coef)}
    rec = Recorder(LOGITS)
    d = decide(fixed([Step(0, 1, "learned", 0.5, rule)]), 6, rec)
    # scores 1 - sigmoid(5 - 10 top) < .5  <=>  top < .5: images 1 (.4) and 5 (.34); image 3 (.5) is exactly on it
    assert rec.calls[1] == (1, [1, 5])
    step = Step(0, 1, "learned", 0.5, rule)
    got = step.scores(P[0][[0, 1]])
    assert got.tolist() == pytest.approx([1 - 1 / (1 + math.exp(4)), 1 - 1 / (1 + math.exp(-1))], abs=1e-12)
    assert d.route.tolist() == [0, 1, 0, 0, 0, 1]


def test_replay_reads_the_saved_arrays_and_a_subset():
    arrays = {f"logits_{m}": LOGITS[k].astype(np.float32) for k, m in enumerate(MODELS)}
    arrays["selector_scores"] = np.zeros((6, 2), dtype=np.float32)
    pol = fixed([Step(0, 1, "max_softmax", 0.6)])
    d = replay(pol, arrays, np.array([5, 0, 3]))
    assert d.route.tolist() == [1, 0, 1]  # tops .34, .9, .5
    np.testing.assert_allclose(d.probs, np.stack([P[1][5], P[0][0], P[1][3]]), atol=1e-6)


def test_no_images():
    d = decide(fixed([Step(0, 1, "max_softmax", ALWAYS)]), 0, Recorder(LOGITS))
    assert d.route.shape == (0,) and d.macs.shape == (0,) and d.models.shape == (0,) and len(d.probs) == 0


# ---------------------------------------------------------------- the selector entry rule and its knob


def test_ties_and_near_ties_go_to_the_cheapest_student():
    scores = np.array([[0.90, 0.93], [0.90, 0.90], [0.50, 0.80]])
    assert entry_routes(scores, 0.05).tolist() == [0, 0, 1]
    assert entry_routes(scores, 0.0).tolist() == [1, 0, 1]
    three = np.array([[0.70, 0.72, 0.74], [0.10, 0.80, 0.79]])
    assert entry_routes(three, 0.03).tolist() == [1, 1]  # the cheapest within 0.03 of the best
    assert entry_routes(three, 0.0).tolist() == [2, 1]
    assert entry_routes(three, 0.05).tolist() == [0, 1]


def test_the_knob_charges_each_score_its_relative_cost():
    costs = relative_costs([25, 100])
    assert costs.tolist() == [0.25, 1.0]
    s = np.array([[0.6, 0.7]])  # charged: .6 - .25 knob vs .7 - knob; they cross at knob 0.1 / 0.75 = 0.1333
    assert entry_routes(s, 0.0, 0.0, costs).tolist() == [1]
    assert entry_routes(s, 0.0, 0.1, costs).tolist() == [1]  # .575 vs .6
    assert entry_routes(s, 0.0, 0.2, costs).tolist() == [0]  # .55 vs .5
    assert entry_routes(s, 0.05, 0.1, costs).tolist() == [0]  # .575 is within .05 of .6
    assert entry_routes(np.array([[0.9, 0.1]]), 0.0, -2.0, costs).tolist() == [1]  # 1.4 vs 2.1: a negative knob buys
    assert entry_routes(np.array([[0.9, 0.1]]), 0.0, -1.0, costs).tolist() == [0]  # 1.15 vs 1.1
    three = relative_costs([10, 20, 40])
    assert three.tolist() == [0.25, 0.5, 1.0]
    # charged at knob .5: .375 .35 .25; at .35: .4125 .425 .4; at .2: .45 .5 .55
    assert entry_routes(np.array([[0.5, 0.6, 0.75]]), 0.0, 0.5, three).tolist() == [0]
    assert entry_routes(np.array([[0.5, 0.6, 0.75]]), 0.0, 0.35, three).tolist() == [1]
    assert entry_routes(np.array([[0.5, 0.6, 0.75]]), 0.0, 0.2, three).tolist() == [2]
    assert entry_routes(np.array([[0.5, 0.6, 0.75]]), 0.06, 0.2, three).tolist() == [1]  # .5 is within .06 of .55



def test_knob_grid_spans_all_dearest_to_all_cheapest():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.55]])
    costs = relative_costs([10, 40])
    for margin in (0.0, 0.1):
        grid = knob_grid(scores, costs, margin)
        assert len(grid) >= 11 and grid == sorted(grid) and 0.0 in grid
        assert entry_routes(scores, margin, grid[0], costs).tolist() == [1, 1, 1]
        assert entry_routes(scores, margin, grid[-1], costs).tolist() == [0, 0, 0]
    three = np.array([[0.2, 0.5, 0.9], [0.9, 0.1, 0.3], [0.4, 0.45, 0.5]])
    c3 = relative_costs([10, 20, 40])
    grid = knob_grid(three, c3)
    assert entry_routes(three, 0.0, grid[0], c3).tolist() == [2, 2, 2]
    assert entry_routes(three, 0.0, grid[-1], c3).tolist() == [0, 0, 0]
    assert knob_grid(scores[:, :1], costs[:1]) == [0.0]  # one student: nothing to sweep


def test_router_policy_is_the_selector_alone():
    p = router_policy(["s", "d", "teacher"], [10, 40, 100], [0, 1], 0.3, 0.05, 7)
    assert p.entry == {"rule": "selector", "students": [0, 1], "knob": 0.3, "tie_margin": 0.05,
                       "costs": [0.25, 1.0], "macs": 7.0}
    assert p.steps == [] and p.combine == "replace" and p.used() == [0, 1] and p.selector_macs == 7.0


def test_used_follows_the_chain_from_the_entry():
    assert fixed([Step(0, 1), Step(1, 2)]).used() == [0, 1, 2]
    assert fixed([Step(0, 2)], entry=1).used() == [1]
    sel = {"rule": "selector", "students": [0, 1], "knob": 0.0, "tie_margin": 0.0, "costs": [0.5, 1.0]}
    assert Policy("h", MODELS, MACS, sel, [Step(1, 2)]).used() == [0, 1, 2]
    assert Policy("r", MODELS, MACS, sel).used() == [0, 1]


# ---------------------------------------------------------------- the file


def _rich_policy() -> Policy:
    rule = {"coef": [0.5, -1.25, 0.1, 2.0, -0.3, 0.0, 1.0, -1.0], "intercept": -0.7,
            "mean": [0.6, 0.2, 0.1, 0.4, 0.9, 0.3, 0.3, 0.4], "scale": [0.1, 0.05, 0.05, 0.2, 0.3, 0.5, 0.5, 0.5]}
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.125, "tie_margin": 0.03, "costs": [0.2, 1.0],
             "macs": 3.0}
    return Policy("learned-committee", MODELS, MACS, entry,
                  [Step(0, 2, "learned", 0.35, rule), Step(1, 2, "max_softmax", 0.7)], "mean",
                  {"rule": "fewest MACs reaching teacher", "select_accuracy": 0.8125})


def test_policy_round_trips_through_json_exactly():
    p = _rich_policy()
    text = json.dumps(p.to_dict())
    q = Policy.from_dict(json.loads(text))
    assert q == p and q.to_dict() == p.to_dict() and json.dumps(q.to_dict()) == text
    assert isinstance(q.steps[0], Step)
    scores = np.array([[0.6, 0.9], [0.8, 0.83], [0.1, 0.2], [0.9, 0.1], [0.5, 0.5], [0.3, 0.7]], dtype=np.float32)
    a, b = decide(p, 6, Recorder(LOGITS), scores), decide(q, 6, Recorder(LOGITS), scores)
    for f in ("probs", "route", "models", "macs", "entry"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


def _bad(**change) -> dict:
    d = fixed([Step(0, 1, "max_softmax", 0.5)]).to_dict()
    d.update(change)
    return d


@pytest.mark.parametrize("change, words", [
    ({"steps": [{"source": 1, "target": 0}]}, "later model"),
    ({"steps": [{"source": 1, "target": 1}]}, "later model"),
    ({"steps": [{"source": 0, "target": 3}]}, "later model"),
    ({"steps": [{"source": 0, "target": 1}, {"source": 0, "target": 2}]}, "one deferral step"),
    ({"steps": [{"source": 0, "target": 1, "score": "entropy"}]}, "score"),
    ({"steps": [{"source": 0, "target": 1, "score": "learned"}]}, "rule"),
    ({"combine": "max"}, "combine"),
    ({"entry": {"rule": "random"}}, "entry rule"),
    ({"entry": {"rule": "fixed", "model": 3}}, "entry model"),
    ({"entry": {"rule": "fixed"}}, "entry model"),
    ({"entry": {"rule": "selector", "students": [1, 0], "knob": 0, "tie_margin": 0, "costs": [1, 1]}}, "ascending"),
    ({"entry": {"rule": "selector", "students": [0, 5], "knob": 0, "tie_margin": 0, "costs": [1, 1]}}, "students"),
    ({"entry": {"rule": "selector", "students": [], "knob": 0, "tie_margin": 0, "costs": []}}, "students"),
    ({"entry": {"rule": "selector", "students": [0, 1], "tie_margin": 0, "costs": [1, 1]}}, "knob"),
    ({"macs": [1.0, 2.0]}, "macs"),
    ({"version": 2}, "version"),
    ({"colour": "red"}, "not a moskd routing policy"),
    ({"steps": [{"source": 0, "target": 1, "colour": "red"}]}, "not a moskd routing policy"),
])
def test_policy_check_refuses_what_cannot_run(change, words):
    with pytest.raises(PolicyError, match=words):
        Policy.from_dict(_bad(**change))


def test_policy_check_runs_on_construction():
    with pytest.raises(PolicyError):
        fixed([Step(2, 1)])
    with pytest.raises(PolicyError):
        fixed([Step(0, 1, "learned", 0.5, None)])
    assert issubclass(PolicyError, ValueError)


# ---------------------------------------------------------------- the learned rule


def test_features_on_a_hand_example():
    h = -(0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    f = features(np.array([[0.2, 0.5, 0.3]]))
    np.testing.assert_allclose(f[0], [0.5, 0.3, 0.2, 0.2, h, 0, 1, 0], atol=1e-12)
    h2 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    f2 = features(np.array([[0.7, 0.3], [0.0, 1.0]]))  # two classes: the third top probability is 0
    np.testing.assert_allclose(f2, [[0.7, 0.3, 0.0, 0.4, h2, 1, 0], [1.0, 0.0, 0.0, 1.0, 0.0, 0, 1]], atol=1e-9)


def test_learned_gain_is_the_logistic_rule_on_standardised_features():
    rule = _rich_policy().steps[0].rule
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    hand = []
    for row, top, cls in (([0.2, 0.5, 0.3], [0.5, 0.3, 0.2], 1), ([0.6, 0.3, 0.1], [0.6, 0.3, 0.1], 0)):
        h = -sum(p * math.log(p) for p in row)
        f = [*top, top[0] - top[1], h, *[1.0 if c == cls else 0.0 for c in range(3)]]
        z = sum((fi - m) / s * c for fi, m, s, c in zip(f, rule["mean"], rule["scale"], rule["coef"]))
        hand.append(1 / (1 + math.exp(-(z + rule["intercept"]))))
    assert learned_gain(rule, probs).tolist() == pytest.approx(hand, abs=1e-12)
    assert Step(0, 1, "learned", 0.5, rule).scores(probs).tolist() == pytest.approx([1 - g for g in hand], abs=1e-12)


# ---------------------------------------------------------------- policy_fit: choosing points


def _pt(acc: float, macs: float, name: str = "") -> Scored:
    return Scored(fixed(), acc, macs, np.zeros(1, bool), {"name": name})


def test_choose_point_within_a_budget_and_for_a_target():
    a, b, c, d, e = _pt(0.8, 100, "a"), _pt(0.9, 200, "b"), _pt(0.9, 150, "c"), _pt(0.95, 400, "d"), _pt(0.92, 150, "e")
    pts = [a, b, c, d]
    assert choose_point(pts, budget=200) is c  # most accurate within budget; ties: fewer MACs
    assert choose_point(pts, budget=150) is c  # the budget itself is within it
    assert choose_point(pts, budget=149) is a
    assert choose_point(pts, budget=99) is None
    assert choose_point(pts, budget=1000) is d
    assert choose_point(pts, target_accuracy=0.9) is c  # the fewest MACs reaching it
    assert choose_point(pts + [e], target_accuracy=0.9) is e  # same MACs: the more accurate
    assert choose_point(pts, target_accuracy=0.8) is a
    assert choose_point(pts, target_accuracy=0.99) is d  # none reaches it: the most accurate
    assert choose_point([a, _pt(0.8, 50, "f")], target_accuracy=0.99).share["name"] == "f"  # ...ties: fewer MACs
    assert choose_point([], target_accuracy=0.5) is None


def test_pareto_keeps_the_points_nothing_beats_by_ascending_macs():
    a, b, c, d, f, g = (_pt(0.8, 100), _pt(0.9, 200), _pt(0.9, 150), _pt(0.95, 400), _pt(0.7, 300), _pt(0.85, 100))
    assert pareto([d, f, b, a, c]) == [a, c, d]
    assert pareto([a, g, d]) == [g, d]  # same MACs: the more accurate one only
    assert pareto([]) == []


# ---------------------------------------------------------------- policy_fit: the learned rule


def _confidences(rng, n: int, c: int = 3):
    """Probabilities whose top probability is uniform on (1/c, 1), predicted class random."""
    top = rng.uniform(0.36, 0.99, n)
    cls = rng.integers(0, c, n)
    rest = (1 - top) / (c - 1)
    p = np.repeat(rest[:, None], c, 1)
    p[np.arange(n), cls] = top
    return p, cls


def test_fit_rule_learns_a_planted_signal():
    rng = np.random.default_rng(1)
    n = 1500
    before, cls = _confidences(rng, n)
    low = before.max(1) < 0.6
    labels = np.where(low, (cls + 1) % 3, cls)  # the first model is right exactly when it is sure
    after = np.zeros_like(before)
    after[np.arange(n), labels] = 1.0  # going on gives the right answer everywhere
    rule = fit_rule(before, after, labels)
    assert rule["images"] == n and len(rule["coef"]) == TOP + 2 + 3
    gain = learned_gain(rule, before)
    # the gain ranks the planted signal: nearly every low-confidence image above nearly every sure one
    pairs = (gain[low][:, None] > gain[~low][None, :]).mean()
    assert pairs > 0.97
    assert gain[low].mean() > 0.8 and gain[~low].mean() < 0.2


def test_fit_rule_with_one_class_is_the_base_rate():
    rng = np.random.default_rng(2)
    before, cls = _confidences(rng, 50)
    rule = fit_rule(before, before, cls)  # going on never helps
    assert rule["coef"] == [0.0] * (TOP + 5)
    assert learned_gain(rule, before) == pytest.approx(np.full(50, 1e-4), rel=1e-6)


# ---------------------------------------------------------------- policy_fit: fitting the policy


def _synthetic(rng, n: int, low: int):
    """Arrays where student a is right unless unsure (top .4), student b is wrong wherever a is unsure,
    and the teacher is always right and sure. The cheapest way to the teacher's accuracy is a > teacher
    on the unsure images: 10 + 100 * low / n MACs per image (b and the selector only add MACs)."""
    labels = rng.integers(0, 3, n)
    unsure = np.zeros(n, bool)
    unsure[rng.permutation(n)[:low]] = True
    def probs(cls, top):
        p = np.repeat(((1 - top) / 2)[:, None], 3, 1)
        p[np.arange(n), cls] = top
        return np.log(p).astype(np.float32)
    wrong = (labels + 1) % 3
    a = probs(np.where(unsure, wrong, labels), np.where(unsure, 0.4, 0.9))
    b = probs(np.where(unsure, wrong, labels), np.full(n, 0.8))
    t = probs(labels, np.full(n, 0.99))
    scores = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    return {"labels": labels, "logits_a": a, "logits_b": b, "logits_teacher": t, "selector_scores": scores}


SETUP = Setup(["a", "b", "teacher"], [10.0, 40.0, 100.0], [0, 1], 2.0, 0.0, 0.0)


def test_fit_policy_reaches_the_target_at_the_fewest_macs_and_reads_only_select_and_spare():
    rng = np.random.default_rng(3)
    select = _synthetic(rng, 80, 0)
    choose = _synthetic(rng, 50, 16)  # the choosing part: 16 of its 50 images unsure
    for k in select:  # select = 50 held-out images, then 30 others
        select[k] = np.concatenate([choose[k], select[k][:30]])
    heldout = list(range(50))
    spare = _synthetic(rng, 60, 20)
    policy, scored = fit_policy(SETUP, select, heldout, spare, target="teacher")
    t = policy.target
    assert t["target"] == "teacher" and t["target_accuracy"] == 1.0 and t["budget_macs"] is None
    assert t["select_images"] == 50 and t["learn_images"] == "spare (60 images)"
    assert t["select_accuracy"] == 1.0 and t["select_macs_per_image"] == pytest.approx(10 + 100 * 16 / 50)
    assert t["candidates"] == len(scored)
    assert not policy.selector and policy.entry["model"] == 0 and policy.used() == [0, 2]
    # with spare given, nothing outside the held-out part of select is read: poison it, same policy
    poisoned = {k: v.copy() for k, v in select.items()}
    for k in ("logits_a", "logits_b", "logits_teacher", "selector_scores"):
        poisoned[k][50:] = np.nan
    again, _ = fit_policy(SETUP, poisoned, heldout, spare, target="teacher")
    assert again.to_dict() == policy.to_dict()
    # without spare, the rest of select trains the learned rules
    p2, scored2 = fit_policy(SETUP, select, heldout, None, target="teacher")
    assert p2.target["learn_images"] == "select (30 images)"
    assert "learned" in {s.policy.family for s in scored2}
    p3, scored3 = fit_policy(SETUP, select, list(range(70)), None)  # 10 images left: too few to learn on
    assert p3.target["learn_images"].startswith("none")
    assert not {s.policy.family for s in scored3} & {"learned", "learned-committee"}


def test_fit_policy_within_a_budget():
    rng = np.random.default_rng(4)
    select = _synthetic(rng, 50, 16)
    p, _ = fit_policy(SETUP, select, list(range(50)), _synthetic(rng, 30, 10), budget_macs=42.0)
    assert p.target["rule"] == "most accurate within budget" and p.target["budget_macs"] == 42.0
    assert p.target["select_accuracy"] == 1.0 and p.target["select_macs_per_image"] == pytest.approx(42.0)
    p, _ = fit_policy(SETUP, select, list(range(50)), None, budget_macs=10.0)  # a alone: 34 of 50 right
    assert p.target["select_accuracy"] == pytest.approx(0.68) and p.target["select_macs_per_image"] == 10.0
    with pytest.raises(MoskdError, match="budget"):
        fit_policy(SETUP, select, list(range(50)), None, budget_macs=5.0)


def test_resolve_target():
    rng = np.random.default_rng(5)
    choose = _synthetic(rng, 40, 10)  # a right on 30 of 40, b likewise, the teacher on all
    assert resolve_target("teacher", choose, SETUP) == 1.0
    assert resolve_target("best-student", choose, SETUP) == pytest.approx(0.75)
    assert resolve_target("0.5", choose, SETUP) == 0.5 and resolve_target("1", choose, SETUP) == 1.0
    for bad in ("0", "1.5", "-0.2", "abc", "nan", "", "teacher2"):
        with pytest.raises(MoskdError, match="--target"):
            resolve_target(bad, choose, SETUP)


def _shifted(arrays: dict, sure: float, unsure: float) -> dict:
    """Student a's confidences moved (as quantization moves them), its answers unchanged (top > 1/3)."""
    p = np.exp(arrays["logits_a"].astype(np.float64))
    top = p.max(1)
    new = np.where(top > 0.6, sure, unsure)
    q = np.repeat(((1 - new) / 2)[:, None], 3, 1)
    q[np.arange(len(p)), p.argmax(1)] = new
    return {**arrays, "logits_a": np.log(q).astype(np.float32)}


def _logits(arrays: dict) -> dict:
    return {k[len("logits_"):]: v for k, v in arrays.items() if k.startswith("logits_")}


def test_refit_thresholds_follows_confidences_that_moved_and_keeps_the_rule():
    rng = np.random.default_rng(6)
    select = _synthetic(rng, 50, 16)
    policy, _ = fit_policy(SETUP, select, list(range(50)), None, target="teacher")
    assert [s.threshold for s in policy.steps] == [0.4] and policy.used() == [0, 2]  # a's unsure: 0.4 - eps
    cheapest = 10 + 100 * 16 / 50
    # a's sure answers drop below the old threshold: it would send every image to the teacher
    moved = _shifted(select, sure=0.38, unsure=0.34)
    p, rec = refit_thresholds(policy, _logits(moved), None, moved["labels"])
    assert rec["refit"] and rec["before"]["select_macs_per_image"] == pytest.approx(110.0)
    assert rec["after"]["select_accuracy"] == 1.0 and rec["after"]["select_macs_per_image"] == pytest.approx(cheapest)
    assert 0.34 < p.steps[0].threshold <= 0.38 and p.target["select_macs_per_image"] == pytest.approx(cheapest)
    same = lambda q: [(s.source, s.target, s.score, s.rule) for s in q.steps]  # noqa: E731
    assert same(p) == same(policy) and p.entry == policy.entry and p.combine == policy.combine
    assert p.target["target_accuracy"] == policy.target["target_accuracy"]
    # a's unsure answers become its surest: only deferring everything still reaches the target
    moved = _shifted(select, sure=0.36, unsure=0.45)
    p, rec = refit_thresholds(policy, _logits(moved), None, moved["labels"])
    assert rec["before"]["select_accuracy"] < 1.0
    assert rec["after"]["select_accuracy"] == 1.0 and rec["after"]["select_macs_per_image"] == pytest.approx(110.0)
    # nothing moved: the thresholds it has are as good as any, and only the choosing images count
    p, rec = refit_thresholds(policy, _logits(select), None, select["labels"], index=np.arange(25))
    assert rec["select_images"] == 25 and rec["after"]["select_accuracy"] == 1.0
    assert rec["after"]["select_macs_per_image"] == pytest.approx(rec["before"]["select_macs_per_image"])


def test_refit_thresholds_keeps_a_shared_threshold_shared_and_skips_what_has_no_step():
    rng = np.random.default_rng(7)
    arrays = _synthetic(rng, 40, 10)
    base = router_policy(SETUP.models, SETUP.macs, [0, 1], 0.0, 0.0, 2.0, "hybrid")
    hybrid = Policy(base.family, base.models, base.macs, base.entry,
                    [Step(0, 2, "max_softmax", 0.5), Step(1, 2, "max_softmax", 0.5)], "replace",
                    {"target_accuracy": 1.0, "budget_macs": None})
    p, rec = refit_thresholds(hybrid, _logits(arrays), arrays["selector_scores"], arrays["labels"])
    assert p.steps[0].threshold == p.steps[1].threshold and rec["after"]["select_accuracy"] == 1.0
    p, rec = refit_thresholds(base, _logits(arrays), arrays["selector_scores"], arrays["labels"])
    assert p is base and not rec["refit"] and rec["why"] == "no deferral step"
