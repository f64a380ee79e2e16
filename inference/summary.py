"""report.json's numbers from per-image arrays (pure: arrays in, dict out).

`summarize` turns RUN/eval/test.npz and select.npz (labels, logits_<model>, selector_scores, route)
and the models' costs into report.json: accuracies, the routed system, baselines, curves, the
cascade at the routed MACs (chosen on `select`), MACs at iso-accuracy and paired-bootstrap CIs.
"""
from __future__ import annotations

import numpy as np

from inference import curves as C
from inference.bundle import TEACHER
from moskd.errors import MoskdError
from selector.model import relative_costs

SELECTOR = "selector"


def logits_of(arrays: dict) -> dict:
    return {k[len("logits_"):]: v for k, v in arrays.items() if k.startswith("logits_")}


def _reduction(value: float, teacher: float) -> float | None:
    return 1.0 - value / teacher if teacher else None


def cascade_families(names: list[str]) -> list[list[str]]:
    """cheapest > each other student, each student > teacher, and the full chain > teacher."""
    fam = [[names[0], k] for k in names[1:]] + [[k, TEACHER] for k in names]
    return fam + ([[*names, TEACHER]] if len(names) > 1 else [])


def _cascade_inputs(arrays: dict, family: list[str]):
    lg = logits_of(arrays)
    return [lg[k].argmax(1) for k in family], [C.max_softmax(lg[k]) for k in family]


def router_routes(scores: np.ndarray, names: list[str], macs: dict, tie_margin: float, knob: float,
                  escalate: float | None) -> np.ndarray:
    """Routes (students 0..S-1, teacher S) as inference.router.Router assigns them."""
    route = C.routes_at(scores, knob, tie_margin, relative_costs([macs[k] for k in names]).numpy())
    if escalate is not None:
        route = np.where(scores.max(1) < escalate, len(names), route)
    return route


def model_rows(lg: dict, y: np.ndarray, costs: dict, num_classes: int) -> dict:
    """Per model: accuracy, 15-bin ECE, per-class accuracy, agreement with the teacher, confusion matrix."""
    teacher_pred = lg[TEACHER].argmax(1)
    rows = {}
    for k, cost in costs.items():
        if k not in lg:  # the selector: its "classes" are students, scored through the router
            rows[k] = {**cost, "accuracy": None, "ece": None, "per_class_accuracy": None}
            continue
        pred = lg[k].argmax(1)
        rows[k] = {**cost, "accuracy": float((pred == y).mean()), "ece": C.ece(lg[k], y),
                   "per_class_accuracy": C.per_class_accuracy(pred, y, num_classes),
                   "agreement_with_teacher": float((pred == teacher_pred).mean()),
                   "confusion": C.confusion(pred, y, num_classes).tolist()}
    return rows


def summarize(test: dict, select: dict, costs: dict, *, names: list[str], tie_margin: float, knob: float,
              escalate: float | None, heldout: list[int] | None, meta: dict) -> dict:
    """report.json's content from the per-image arrays of `test` and `select`.

    costs: name -> {role, arch, params, bytes, macs} for the teacher, the routed students (`names`,
    route order = ascending MACs), other students and the selector. test["route"] must be the
    router's routes (students 0..S-1, teacher S); select's are recomputed from its scores.
    """
    y = test["labels"]
    n = len(y)
    if n == 0:
        raise MoskdError("the evaluation split holds no images; raise --limit")
    lg = logits_of(test)
    macs = {k: float(v["macs"]) for k, v in costs.items()}
    num_classes = lg[TEACHER].shape[1]
    pred = {k: v.argmax(1) for k, v in lg.items()}
    right = {k: pred[k] == y for k in lg}
    acc = {k: float(v.mean()) for k, v in right.items()}
    route_names = [*names, TEACHER]
    correct = np.stack([right[k] for k in names], 1)  # (N, S)

    # the routed system at its operating point (test routes come from the real dispatch)
    route = test["route"].astype(np.int64)
    routed_right = np.stack([right[k] for k in route_names], 1)[np.arange(n), route]
    share = np.bincount(route, minlength=len(route_names)) / n
    routed_acc = float(routed_right.mean())
    routed_macs = macs[SELECTOR] + float(sum(share[i] * macs[k] for i, k in enumerate(route_names)))
    route_share = {k: float(share[i]) for i, k in enumerate(route_names) if k != TEACHER or escalate is not None}

    # choices on `select`: the best single student, and the cascade at the router's MACs
    sel_y, sel_lg = select["labels"], logits_of(select)
    sel_acc = {k: float((sel_lg[k].argmax(1) == sel_y).mean()) for k in names}
    best = max(names, key=lambda k: (sel_acc[k], -macs[k]))
    held = np.asarray(heldout if heldout else range(len(sel_y)), dtype=np.int64)
    sel_route = router_routes(select["selector_scores"][held], names, macs, tie_margin, knob, escalate)
    budget = macs[SELECTOR] + float(np.array([macs[k] for k in route_names])[sel_route].mean())
    families = cascade_families(names)
    cascade_curves, picks = {}, []
    for fam in families:
        key = ">".join(fam)
        fmacs = [macs[k] for k in fam]
        s_preds, s_confs = _cascade_inputs(select, fam)
        thresholds = C.cascade_thresholds(s_confs[0])
        t_preds, t_confs = _cascade_inputs(test, fam)
        cascade_curves[key] = C.cascade_curve(t_preds, t_confs, fmacs, y, thresholds)
        point = C.best_under_budget(C.cascade_curve(s_preds, s_confs, fmacs, sel_y, thresholds), budget)
        if point is not None:
            picks.append((point["accuracy"], -point["macs_per_image"], key, point["threshold"], fam))
    same = None
    if picks:
        sel_accuracy, _, key, threshold, fam = max(picks)
        t_preds, t_confs = _cascade_inputs(test, fam)
        c_pred, c_cost = C.cascade_answer(t_preds, t_confs, [macs[k] for k in fam], threshold)
        c_right = c_pred == y
        same = {"cascade": key, "threshold": threshold, "select_accuracy": sel_accuracy,
                "select_budget_macs": budget, "accuracy": float(c_right.mean()),
                "macs_per_image": float(c_cost.mean())}

    oracle = float(correct.any(1).mean())
    denom = oracle - acc[best]
    random_right = sum(share[i] * right[k].astype(np.float64) for i, k in enumerate(route_names))
    conf = np.stack([C.max_softmax(lg[k]) for k in names], 1)
    confident = float(correct[np.arange(n), conf.argmax(1)].mean())
    ci95 = {"routed_minus_best_student": C.paired_bootstrap(routed_right.astype(float) - right[best]),
            "routed_minus_random": C.paired_bootstrap(routed_right - random_right),
            "routed_minus_cascade_same_macs": (C.paired_bootstrap(routed_right.astype(float) - c_right)
                                               if same else None)}

    router_curve = C.router_curve(test["selector_scores"], np.stack([pred[k] for k in names], 1), y,
                                  [macs[k] for k in names], macs[SELECTOR], tie_margin, names)
    all_cascade = [p for c in cascade_curves.values() for p in c]
    iso = {target: {"router": C.iso_accuracy(router_curve, acc_target), "cascade": C.iso_accuracy(all_cascade, acc_target)}
           for target, acc_target in (("teacher", acc[TEACHER]), ("best_student", acc[best]))}

    one = correct.sum(1) == 1
    sel_route_test = router_routes(test["selector_scores"], names, macs, tie_margin, knob, None)
    selector = {
        "exactly_one_right": int(one.sum()),
        "accuracy_on_exactly_one_right": float(correct[one, sel_route_test[one]].mean()) if one.any() else None,
        "cascade_accuracy_on_exactly_one_right": float(c_right[one].mean()) if one.any() and same else None,
        "route_share": {k: float((sel_route_test == i).mean()) for i, k in enumerate(names)},
        "macs_share_of_cheapest_student": macs[SELECTOR] / min(macs[k] for k in names),
    }

    routed_params = costs[SELECTOR]["params"] + sum(costs[k]["params"] for k in names)
    routed_bytes = costs[SELECTOR]["bytes"] + sum(costs[k]["bytes"] for k in names)
    bundle = [TEACHER, *names, SELECTOR]
    systems = {
        "routed": {"params": routed_params, "bytes": routed_bytes, "macs": routed_macs},
        # the bundle runs as the routed system (the teacher only takes escalated images)
        "bundle": {"params": sum(costs[k]["params"] for k in bundle),
                   "bytes": sum(costs[k]["bytes"] for k in bundle), "macs": routed_macs},
    }
    t = costs[TEACHER]
    compression = {
        k: {"params_reduction": _reduction(v["params"], t["params"]),
            "bytes_reduction": _reduction(v["bytes"], t["bytes"]),
            "macs_reduction": _reduction(v["macs"], t["macs"])}
        for k, v in {**costs, **systems}.items()
    }
    return {
        **meta, "num_images": n,
        "models": model_rows(lg, y, costs, num_classes),
        "routed": {"accuracy": routed_acc, "macs_per_image": routed_macs, "route_share": route_share,
                   "knob": knob, "escalate_threshold": escalate, "students": names, "tie_margin": tie_margin,
                   "params": routed_params, "bytes": routed_bytes},
        "oracle": {"accuracy": oracle},
        "baselines": {**{f"always_{k}": acc[k] for k in names},
                      # expectation over random routers sending the same shares to each route
                      "random_same_share": float(random_right.mean()),
                      "most_confident": confident},
        "best_single_student": best,
        "gap_closed": (routed_acc - acc[best]) / denom if denom > 1e-12 else None,
        "cascade_same_macs": same,
        "curves": {"router": router_curve, "cascade": cascade_curves,
                   "random": C.random_curve(correct, [macs[k] for k in names], names)},
        "iso_accuracy": iso,
        "ci95": ci95,
        "selector": selector,
        "systems": systems,
        "compression": compression,
    }
