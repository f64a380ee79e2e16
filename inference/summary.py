"""report.json's numbers from per-image arrays (pure: arrays in, dict out).

`summarize` turns RUN/eval/{test,select[,spare]}.npz (labels, logits_<model>, selector_scores), the
models' costs and the deployed routing policy (RUN/policy.json) into report.json: accuracies, the
deployed policy and every policy family's curve, the selector's own operating point, baselines,
MACs at iso-accuracy and paired-bootstrap CIs. Every system is a moskd.policy.Policy replayed on
the arrays, so the report runs exactly the rule the runtime runs; every choice (a family's point,
a threshold, the best single student) is made on `select`'s choosing images (inference.policy_fit),
and `test` is only scored.
"""
from __future__ import annotations

import numpy as np

from inference import curves as C
from inference.policy_fit import (COMMITTEE, Scored, Setup, candidates, choose_point, pareto,
                                  resolve_target, score, split_choose_learn)
from moskd.errors import MoskdError
from moskd.policy import TEACHER, Policy, replay, router_policy

SELECTOR = "selector"
REPLACE_FAMILIES = ("cascade", "hybrid", "learned")


def logits_of(arrays: dict) -> dict:
    return {k[len("logits_"):]: v for k, v in arrays.items() if k.startswith("logits_")}


def _reduction(value: float, teacher: float) -> float | None:
    return 1.0 - value / teacher if teacher else None


def model_rows(lg: dict, y: np.ndarray, costs: dict, num_classes: int) -> dict:
    """Per model: accuracy, 15-bin ECE, per-class accuracy, agreement with the teacher, confusion matrix."""
    teacher_pred = lg[TEACHER].argmax(1)
    rows = {}
    for k, cost in costs.items():
        if k not in lg:  # the selector: its "classes" are students, scored through the policies
            rows[k] = {**cost, "accuracy": None, "ece": None, "per_class_accuracy": None}
            continue
        pred = lg[k].argmax(1)
        rows[k] = {**cost, "accuracy": float((pred == y).mean()), "ece": C.ece(lg[k], y),
                   "per_class_accuracy": C.per_class_accuracy(pred, y, num_classes),
                   "agreement_with_teacher": float((pred == teacher_pred).mean()),
                   "confusion": C.confusion(pred, y, num_classes).tolist()}
    return rows


def make_setup(names: list[str], costs: dict, tie_margin: float, knob: float) -> Setup:
    models = [*names, TEACHER]
    return Setup(models, [float(costs[k]["macs"]) for k in models], list(range(len(names))),
                 float(costs[SELECTOR]["macs"]), float(tie_margin), float(knob))


# ---------------------------------------------------------------- candidates on both splits


class Points:
    """Every candidate policy scored on the choosing images (`select`) and on `test`."""

    def __init__(self, policies: list[Policy], choose: dict, test: dict, scored: list[Scored] | None = None):
        """scored: the same candidates already scored on `choose` (by the policy fit that just ran):
        each candidate is scored once per split."""
        self.sel = scored if scored is not None else [score(p, choose) for p in policies]
        self.test = [score(s.policy, test) for s in self.sel]

    def family(self, *families: str) -> list[int]:
        return [i for i, s in enumerate(self.sel) if s.policy.family in families]

    def pick(self, idx: list[int], target: float | None = None, budget: float | None = None) -> int | None:
        """Index of the point chosen on select among idx (policy_fit.choose_point's rule)."""
        best = choose_point([self.sel[i] for i in idx], target, budget)
        return None if best is None else idx[[self.sel[i] for i in idx].index(best)]

    def row(self, i: int) -> dict:
        s, t = self.sel[i], self.test[i]
        return {"family": s.policy.family, "policy": s.policy.describe(), "accuracy": t.accuracy,
                "macs_per_image": t.macs, "select_accuracy": s.accuracy, "select_macs_per_image": s.macs,
                "params": _params(s.policy)}

    def curve(self, idx: list[int]) -> list[dict]:
        """The family's select-Pareto points, scored on test."""
        front = pareto([self.sel[i] for i in idx])
        return [self.row(idx[[self.sel[i] for i in idx].index(p)]) for p in front]


def _params(p: Policy) -> dict:
    out = {"combine": p.combine, "thresholds": [s.threshold for s in p.steps],
           "chain": [p.models[p.entry["model"]]] if not p.selector else ["selector"]}
    out["chain"] += [p.models[s.target] for s in p.steps]
    if p.selector:
        out["knob"] = p.entry["knob"]
    return out


def compare(points: Points, a: int | None, b_idx: list[int]) -> dict | None:
    """a against the most accurate of b_idx on select within a's select MACs: both on test, with the
    paired-bootstrap CI of the difference."""
    if a is None:
        return None
    b = points.pick(b_idx, budget=points.sel[a].macs)
    if b is None:
        return None
    ta, tb = points.test[a], points.test[b]
    return {"a": points.row(a), "b": points.row(b), "difference": ta.accuracy - tb.accuracy,
            "ci95": C.paired_bootstrap(ta.right.astype(float) - tb.right)}


# ---------------------------------------------------------------- sections


def policy_section(policy: Policy, test: dict, names: list[str], acc: dict, best: str, right: dict) -> dict:
    d = replay(policy, test)
    y = test["labels"]
    ok = d.pred == y
    n = len(y)
    share = np.bincount(d.route, minlength=len(policy.models)) / n
    ran = {m: float(((d.models >> k) & 1).mean()) for k, m in enumerate(policy.models)}
    return {"family": policy.family, "description": policy.describe(), "accuracy": float(ok.mean()),
            "macs_per_image": float(d.macs.mean()), "route_share": {m: float(share[k]) for k, m in
                                                                    enumerate(policy.models)},
            "ran_share": ran, "target": policy.target,
            "minus_teacher": float(ok.mean()) - acc[TEACHER], "minus_best_student": float(ok.mean()) - acc[best],
            "_right": ok}


def routed_section(setup: Setup, test: dict, choose: dict, points: Points, right: dict, best: str) -> dict:
    """The selector's own operating point (trainSelector's knob), the pre-hoc router of old."""
    p = router_policy(setup.models, setup.macs, setup.students, setup.knob, setup.tie_margin, setup.selector_macs)
    d = replay(p, test)
    y = test["labels"]
    names = [setup.models[k] for k in setup.students]
    routed_right = d.pred == y
    share = np.bincount(d.route, minlength=len(setup.models)) / len(y)
    budget = score(p, choose).macs
    same = points.pick(points.family("cascade"), budget=budget)
    same_row = None
    if same is not None:
        s = points.sel[same].policy
        same_row = {"cascade": ">".join(_params(s)["chain"]), "threshold": s.steps[0].threshold if s.steps else 0.0,
                    "thresholds": [st.threshold for st in s.steps], "select_accuracy": points.sel[same].accuracy,
                    "select_budget_macs": budget, "accuracy": points.test[same].accuracy,
                    "macs_per_image": points.test[same].macs}
    correct = np.stack([right[k] for k in names], 1)
    random_right = sum(share[i] * right[k].astype(np.float64) for i, k in enumerate(names))
    ci = {"routed_minus_best_student": C.paired_bootstrap(routed_right.astype(float) - right[best]),
          "routed_minus_random": C.paired_bootstrap(routed_right - random_right),
          "routed_minus_cascade_same_macs": (C.paired_bootstrap(routed_right.astype(float) - points.test[same].right)
                                             if same is not None else None)}
    one = correct.sum(1) == 1
    selector = {
        "exactly_one_right": int(one.sum()),
        "accuracy_on_exactly_one_right": float(correct[one, d.route[one]].mean()) if one.any() else None,
        "cascade_accuracy_on_exactly_one_right": (float(points.test[same].right[one].mean())
                                                  if one.any() and same is not None else None),
        "route_share": {k: float(share[i]) for i, k in enumerate(names)},
        "macs_share_of_cheapest_student": setup.selector_macs / min(setup.macs[k] for k in setup.students),
    }
    routed = {"accuracy": float(routed_right.mean()), "macs_per_image": float(d.macs.mean()),
              "route_share": {k: float(share[i]) for i, k in enumerate(names)}, "knob": setup.knob,
              "escalate_threshold": None, "students": names, "tie_margin": setup.tie_margin}
    return {"routed": routed, "same": same_row, "ci": ci, "selector": selector,
            "random": float(random_right.mean()), "correct": correct}


def iso_section(points: Points, targets: dict) -> tuple[dict, dict]:
    """Per target and family: the cheapest point whose *select* accuracy reaches the target's select
    accuracy, with its test accuracy and MACs (None: none reaches it)."""
    fams = sorted({s.policy.family for s in points.sel} - {"single"})
    detail = {}
    for name, target in targets.items():
        detail[name] = {}
        for fam in fams:
            idx = points.family(fam)
            reach = [i for i in idx if points.sel[i].accuracy >= target - 1e-12]
            i = min(reach, key=lambda i: (points.sel[i].macs, -points.sel[i].accuracy)) if reach else None
            detail[name][fam] = None if i is None else points.row(i)
    flat = {name: {"router": (d.get("router") or {}).get("macs_per_image"),
                   "cascade": (d.get("cascade") or {}).get("macs_per_image")} for name, d in detail.items()}
    return flat, detail


def comparisons(points: Points, deployed: int | None, target: float) -> dict:
    """The differences the issue's claims rest on, each at equal MACs (chosen on select), with CIs."""
    pick = lambda *fams: points.pick(points.family(*fams), target)  # noqa: E731
    committee = [f + COMMITTEE for f in REPLACE_FAMILIES]
    return {
        "policy_minus_cascade_same_macs": compare(points, deployed, points.family("cascade")),
        "learned_minus_max_softmax": compare(points, pick("learned"), points.family("cascade")),
        "hybrid_minus_cascade": compare(points, pick("hybrid"), points.family("cascade")),
        "committee_minus_replace": compare(points, pick(*committee), points.family(*REPLACE_FAMILIES)),
    }


def compression_section(costs: dict, names: list[str], routed_macs: float) -> tuple[dict, dict]:
    routed_params = costs[SELECTOR]["params"] + sum(costs[k]["params"] for k in names)
    routed_bytes = costs[SELECTOR]["bytes"] + sum(costs[k]["bytes"] for k in names)
    bundle = [TEACHER, *names, SELECTOR]
    systems = {
        "routed": {"params": routed_params, "bytes": routed_bytes, "macs": routed_macs},
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
    return systems, compression


# ---------------------------------------------------------------- report.json


def summarize(test: dict, select: dict, costs: dict, *, names: list[str], tie_margin: float, knob: float,
              heldout: list[int] | None, meta: dict, policy: Policy, spare: dict | None = None,
              scored: list[Scored] | None = None) -> dict:
    """report.json's content from the per-image arrays of `test`, `select` (and `spare`). costs: name ->
    {role, arch, params, bytes, macs} of the teacher, the routed students (`names`, ascending MACs), other
    students and the selector; scored: the candidates already scored on select (policy_fit.fit_policy)."""
    y = test["labels"]
    if len(y) == 0:
        raise MoskdError("the evaluation split holds no images; raise --limit")
    lg = logits_of(test)
    right = {k: v.argmax(1) == y for k, v in lg.items()}
    acc = {k: float(v.mean()) for k, v in right.items()}
    sel_acc = {k: float((select[f"logits_{k}"].argmax(1) == select["labels"]).mean()) for k in names}
    best = max(names, key=lambda k: (sel_acc[k], -costs[k]["macs"]))  # chosen on select
    setup = make_setup(names, costs, tie_margin, knob)
    choose, learn, _ = split_choose_learn(select, heldout, spare)
    points = Points([] if scored is not None else candidates(setup, choose, learn), choose, test, scored)
    targets = {"teacher": resolve_target("teacher", choose, setup),
               "best_student": resolve_target("best-student", choose, setup)}
    dep = policy_section(policy, test, names, acc, best, right)
    deployed = next((i for i, s in enumerate(points.sel) if s.policy.to_dict() | {"target": {}}
                     == policy.to_dict() | {"target": {}}), None)
    if deployed is None:  # fitted with other settings (--budget-macs, another target): score it as it is
        points.sel.append(score(policy, choose))
        points.test.append(score(policy, test))
        deployed = len(points.sel) - 1
    r = routed_section(setup, test, choose, points, right, best)
    flat_iso, iso_points = iso_section(points, targets)
    under = points.pick(list(range(len(points.sel))), budget=setup.macs[setup.teacher])
    cmp = comparisons(points, deployed, targets["teacher"])
    dep_right = dep.pop("_right")  # the deployed policy's per-image rightness, for its CIs
    ci = {**r["ci"],
          "policy_minus_teacher": C.paired_bootstrap(dep_right.astype(float) - right[TEACHER]),
          "policy_minus_best_student": C.paired_bootstrap(dep_right.astype(float) - right[best]),
          **{k: (v["ci95"] if v else None) for k, v in cmp.items()}}
    oracle, conf = float(r["correct"].any(1).mean()), np.stack([C.max_softmax(lg[k]) for k in names], 1)
    denom = oracle - acc[best]
    systems, compression = compression_section(costs, names, r["routed"]["macs_per_image"])
    return {
        **meta, "num_images": int(len(y)),
        "models": model_rows(lg, y, costs, lg[TEACHER].shape[1]),
        "policy": {**dep, "best_under_teacher_macs": None if under is None else points.row(under)},
        "routed": {**r["routed"], "params": systems["routed"]["params"], "bytes": systems["routed"]["bytes"]},
        "oracle": {"accuracy": oracle},
        "baselines": {**{f"always_{k}": acc[k] for k in names}, "random_same_share": r["random"],
                      "most_confident": float(r["correct"][np.arange(len(y)), conf.argmax(1)].mean())},
        "best_single_student": best,
        "gap_closed": (r["routed"]["accuracy"] - acc[best]) / denom if denom > 1e-12 else None,
        "cascade_same_macs": r["same"],
        "comparisons": {k: v for k, v in cmp.items()},
        "curves": _curves(points, r["correct"], costs, names),
        "iso_accuracy": flat_iso, "iso_points": iso_points,
        "select_targets": targets,
        "ci95": ci,
        "selector": r["selector"],
        "systems": systems,
        "compression": compression,
    }


def _curves(points: Points, correct: np.ndarray, costs: dict, names: list[str]) -> dict:
    """report.json's curves: the selector's knob swept, each cascade chain, random routing and every family."""
    families = sorted({s.policy.family for s in points.sel} - {"single"})
    return {"router": [{"knob": s.policy.entry["knob"], "accuracy": t.accuracy, "macs_per_image": t.macs,
                        "select_accuracy": s.accuracy, "share": {k: t.share[k] for k in names}}
                       for s, t in ((points.sel[i], points.test[i]) for i in points.family("router"))],
            "cascade": _chain_curves(points),
            "random": C.random_curve(correct, [costs[k]["macs"] for k in names], names),
            "families": {fam: points.curve(points.family(fam)) for fam in families}}


def _chain_curves(points: Points) -> dict:
    """Max-softmax replacing cascades per chain ("a>b", "a>b>c"): their select-Pareto points on test."""
    by_chain: dict[str, list[int]] = {}
    for i in points.family("cascade"):
        chain = points.sel[i].policy.target.get("chain")  # None: the deployed policy, scored beside the candidates
        if chain:
            by_chain.setdefault(">".join(chain), []).append(i)
    return {k: [{**row, "threshold": (row["params"]["thresholds"] or [0.0])[0]} for row in points.curve(idx)]
            for k, idx in by_chain.items()}



