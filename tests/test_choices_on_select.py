"""Everything a report chooses (the best single student, the cascade compared at the routed MACs and
its threshold, the MACs budget it must stay within, the router's operating point, the grids the
curves sweep) is chosen on `select`, never on `test`: two reports that share their `select` arrays
but have very different `test` arrays must make the same choices. The choices are found by walking
the whole report, so a choice added anywhere is covered by its key."""
from __future__ import annotations

import numpy as np

from inference.policy_fit import fit_policy
from inference.summary import make_setup, summarize
from tests.test_report import COSTS, onehot_logits

CHOICE_KEYS = {"best_single_student", "cascade", "threshold", "select_accuracy", "select_budget_macs", "knob",
               "escalate_threshold", "tie_margin", "students", "family", "policy", "description",
               "select_macs_per_image", "target_accuracy"}
N, CLASSES = 400, 4


def split(rng, accuracy: dict, calibrated: dict, route_bias: float = 0.0) -> dict:
    """Per-image arrays: each model right on a random `accuracy` share of the images, its max softmax
    high where it is right (calibrated) or where it is wrong (not); selector scores near its truth."""
    labels = rng.integers(0, CLASSES, N)
    out = {"labels": labels}
    right_of = {}
    for name, acc in accuracy.items():
        right = rng.random(N) < acc
        pred = np.where(right, labels, (labels + rng.integers(1, CLASSES, N)) % CLASSES)
        sure = right if calibrated.get(name, True) else ~right
        conf = np.where(sure, rng.uniform(0.7, 0.99, N), rng.uniform(0.3, 0.6, N))
        out[f"logits_{name}"] = onehot_logits(pred, conf, CLASSES).astype(np.float32)
        right_of[name] = right
    noise = rng.normal(0, 0.2, (N, 2))
    scores = np.clip(np.stack([right_of["a"], right_of["b"]], 1) * 0.6 + 0.2 + noise + [route_bias, 0], 0, 1)
    out["selector_scores"] = scores.astype(np.float32)
    out["route"] = np.where(scores[:, 0] >= scores[:, 1], 0, 1)
    return out


def choices(report, path=()) -> dict:
    """(path, value) of every choice-valued key anywhere in the report (curve grids included)."""
    found = {}
    if isinstance(report, dict):
        for k, v in report.items():
            if k in CHOICE_KEYS and not isinstance(v, (dict, list)) or k == "students":
                found[(*path, k)] = v
            else:
                found.update(choices(v, (*path, k)))
    elif isinstance(report, list):
        for i, v in enumerate(report):
            found.update(choices(v, (*path, i)))
    return found


def two_reports():
    rng = np.random.default_rng(0)
    select = split(rng, {"a": 0.80, "b": 0.70, "teacher": 0.90}, {})  # on select: a beats b, confidences honest
    # two test splits that disagree with select and with each other: b best, a's confidence misleading ...
    test_1 = split(np.random.default_rng(1), {"a": 0.55, "b": 0.85, "teacher": 0.95}, {"a": False}, route_bias=0.3)
    # ... or a far ahead, b's confidence misleading, the teacher poor
    test_2 = split(np.random.default_rng(2), {"a": 0.95, "b": 0.40, "teacher": 0.60}, {"b": False})
    heldout = list(range(0, N, 2))
    policy, _ = fit_policy(make_setup(["a", "b"], COSTS, 0.05, 0.3), select, heldout)  # the deployed policy
    kw = dict(names=["a", "b"], tie_margin=0.05, knob=0.3, heldout=heldout, meta={"dataset": "x", "split": "test"},
              policy=policy)
    r1, r2 = (summarize(t, select, COSTS, **kw) for t in (test_1, test_2))
    assert r1["best_single_student"] == "a" and r1["cascade_same_macs"] is not None  # the choices exist
    assert r1["models"]["b"]["accuracy"] > r1["models"]["a"]["accuracy"]  # and test would choose otherwise
    c1, c2 = choices(r1), choices(r2)
    assert c1.keys() == c2.keys()
    return {k: (c1[k], c2[k]) for k in c1 if c1[k] != c2[k]}


# iso_accuracy's figures are the test MACs of points chosen on select; the points themselves (their
# `policy` descriptions under iso_points) are among the choices compared
MEASURED = (("iso_accuracy",),)


def test_every_choice_of_the_report_is_made_on_select():
    differ = {k: v for k, v in two_reports().items() if not any(k[:len(m)] == m for m in MEASURED)}
    assert not differ, f"chosen on test (differ between two test splits with one select split): {differ}"
