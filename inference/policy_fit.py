"""Fitting the routing policy on `select`: every family's candidates, scored on the same images, and
the deployed point chosen among them (moskd.policy runs what this chooses).

Images (never `train`, never `test`):
  choose  the selector's held-out part of `select` (its scores there are honest: the selector never
          trained on them); every threshold, knob and the deployed point are chosen here;
  learn   `spare` when the run has one (images no model trained on), else the rest of `select`:
          the learned deferral rules are fitted here, on probability features only.

Families (moskd.policy holds the rule; this module only enumerates and scores parameters):
  single             each model alone
  router             the selector picks a student, which answers (its cost knob swept)
  cascade            a fixed first model, max-softmax deferral along a chain (a>b, a>b>c)
  hybrid             the selector picks the first student, max-softmax deferral to the teacher
  learned            as cascade, but the deferral score is a logistic rule learned on `learn`
  <family>-committee as above, but an image that goes on is answered by the mean probabilities of
                     every model run so far
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import numpy as np

from moskd.errors import MoskdError
from moskd.choose import choose_point  # noqa: F401 (summary and the tests take it from here too)
from moskd.policy import (ALWAYS, Policy, Step, decide, features, knob_grid, relative_costs, replay, router_policy,
                          softmax)

COMMITTEE = "-committee"
FAMILIES = ("single", "router", "cascade", "hybrid", "learned",
            "cascade" + COMMITTEE, "hybrid" + COMMITTEE, "learned" + COMMITTEE)
TARGETS = ("teacher", "best-student")


@dataclass
class Scored:
    """A candidate policy with its accuracy and MACs per image on a split's images."""
    policy: Policy
    accuracy: float
    macs: float
    right: np.ndarray  # (N,) bool
    share: dict  # model name -> share of images it answered (last)


def score(policy: Policy, arrays: dict, index=None) -> Scored:
    d = replay(policy, arrays, index)
    y = arrays["labels"] if index is None else arrays["labels"][index]
    right = d.pred == y
    n = max(len(y), 1)
    share = {m: float((d.route == k).sum() / n) for k, m in enumerate(policy.models)}
    return Scored(policy, float(right.mean()) if len(y) else float("nan"), float(d.macs.mean()) if len(y) else 0.0,
                  right, share)


def thresholds(conf: np.ndarray, points: int = 20) -> list[float]:
    """0 (never defer), quantiles of the deferral score over the choosing images (scores crowd near 1,
    where an even grid jumps), and ALWAYS."""
    qs = np.quantile(conf, np.linspace(0.02, 0.98, points)) if len(conf) else []
    return sorted({0.0, ALWAYS, *[round(float(q), 6) for q in qs]})


def chains(n_students: int) -> list[list[int]]:
    """Fixed-entry chains in route order (teacher = n_students): each student > teacher, the cheapest
    > each dearer student, and every student in turn > teacher."""
    t = n_students
    out = [[s, t] for s in range(n_students)] + [[0, j] for j in range(1, n_students)]
    return out + ([[*range(n_students), t]] if n_students > 1 else [])


# ---------------------------------------------------------------- learned deferral


def chain_answers(probs: list[np.ndarray], chain: list[int], combine: str) -> list[np.ndarray]:
    """The answer's probabilities after each model of the chain has run (every image going on)."""
    out, total = [], None
    for i, k in enumerate(chain):
        total = probs[k] if total is None else total + probs[k]
        out.append(total / (i + 1) if combine == "mean" else probs[k])
    return out


def fit_rule(before: np.ndarray, after: np.ndarray, labels: np.ndarray) -> dict:
    """Logistic rule for P(going on makes a wrong answer right), on the answer's probability features."""
    from sklearn.linear_model import LogisticRegression

    f = features(before)
    gain = (after.argmax(1) == labels) & (before.argmax(1) != labels)
    mean, scale = f.mean(0), f.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    if gain.all() or not gain.any():  # one class: a constant rule (the base rate)
        rate = np.clip(gain.mean(), 1e-4, 1 - 1e-4)
        return {"coef": [0.0] * f.shape[1], "intercept": float(np.log(rate / (1 - rate))),
                "mean": mean.tolist(), "scale": scale.tolist(), "images": int(len(labels))}
    lr = LogisticRegression(C=1.0, max_iter=2000).fit((f - mean) / scale, gain)
    return {"coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]), "mean": mean.tolist(),
            "scale": scale.tolist(), "images": int(len(labels))}


# ---------------------------------------------------------------- candidates


@dataclass
class Setup:
    models: list[str]  # route order: students by ascending MACs, then the teacher
    macs: list[float]
    students: list[int]  # the selector's students (route indices)
    selector_macs: float
    tie_margin: float
    knob: float  # trainSelector's operating knob

    @property
    def teacher(self) -> int:
        return len(self.models) - 1


def _cascade(setup: Setup, family: str, chain: list[int], ths: list[float], combine: str,
             rules: list | None = None) -> Policy:
    steps = []
    for i, (a, b, t) in enumerate(zip(chain, chain[1:], ths)):
        if t <= 0:  # never defers: the chain ends here (so a bundle need not hold the models after it)
            break
        steps.append(Step(a, b, "learned" if rules else "max_softmax", float(t), rules[i] if rules else None))
    return Policy(family, setup.models, setup.macs, {"rule": "fixed", "model": chain[0]}, steps, combine,
                  {"chain": [setup.models[k] for k in chain]})  # the chain it was drawn from (for the curves)


def _grid(choose: dict, chain: list[int], combine: str, rules: list | None, points: int) -> list[list[float]]:
    """Threshold grids per step of a chain, from the deferral score's quantiles on the choosing images."""
    probs = [softmax(choose[f"logits_{m}"]) for m in choose["_models"]]
    answers = chain_answers(probs, chain, combine)
    grids = []
    for i in range(len(chain) - 1):
        s = answers[i].max(1) if rules is None else Step(0, 1, "learned", 0.0, rules[i]).scores(answers[i])
        grids.append(thresholds(s, points))
    return grids


def candidates(setup: Setup, choose: dict, learn: dict | None, with_selector: bool = True) -> list[Policy]:
    """Every family's candidate policies. `choose` and `learn` are per-image arrays (logits_<model>,
    labels, selector_scores); `learn` None: no learned family."""
    out: list[Policy] = [Policy("single", setup.models, setup.macs, {"rule": "fixed", "model": k})
                         for k in range(len(setup.models))]
    S, T = len(setup.students), setup.teacher
    costs = relative_costs([setup.macs[k] for k in setup.students])
    if with_selector and S > 1:
        knobs = knob_grid(choose["selector_scores"], costs, setup.tie_margin, points=31)
        out += [router_policy(setup.models, setup.macs, setup.students, k, setup.tie_margin, setup.selector_macs)
                for k in sorted({*knobs, setup.knob})]
    choose = {**choose, "_models": setup.models}
    learn_probs = [softmax(learn[f"logits_{m}"]) for m in setup.models] if learn is not None else None
    for combine in ("replace", "mean"):
        suffix = "" if combine == "replace" else COMMITTEE
        for chain in chains(S):
            ways = [("cascade", None)]
            if learn_probs is not None:
                answers = chain_answers(learn_probs, chain, combine)
                ways.append(("learned", [fit_rule(answers[i], answers[i + 1], learn["labels"])
                                         for i in range(len(chain) - 1)]))
            for family, rules in ways:
                grids = _grid(choose, chain, combine, rules, 20 if len(chain) == 2 else 11)
                for ths in np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(grids), -1).T:
                    out.append(_cascade(setup, family + suffix, chain, list(ths), combine, rules))
        if with_selector and S > 1:  # hybrid: the selector's pick, then max-softmax deferral to the teacher
            knobs = knob_grid(choose["selector_scores"], costs, setup.tie_margin, points=5)
            probs = [softmax(choose[f"logits_{m}"]) for m in setup.models]
            conf = np.concatenate([probs[k].max(1) for k in setup.students])
            for knob in sorted({*knobs, setup.knob}):
                base = router_policy(setup.models, setup.macs, setup.students, knob, setup.tie_margin,
                                     setup.selector_macs, "hybrid" + suffix)
                for t in thresholds(conf, 16):
                    steps = [Step(k, T, "max_softmax", float(t)) for k in setup.students] if t > 0 else []
                    out.append(Policy(base.family, base.models, base.macs, base.entry, steps, combine))
    return out


# ---------------------------------------------------------------- choosing


def pareto(points: list[Scored]) -> list[Scored]:
    """Points no other point beats on both accuracy and MACs, by ascending MACs."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p.macs, -p.accuracy)):
        if p.accuracy > best + 1e-12:
            front.append(p)
            best = p.accuracy
    return front


def resolve_target(target: str, choose: dict, setup: Setup) -> float:
    """--target teacher | best-student | ACC (0..1] as an accuracy on the choosing images."""
    y = choose["labels"]
    accs = {m: float((choose[f"logits_{m}"].argmax(1) == y).mean()) for m in setup.models}
    if target == "teacher":
        return accs[setup.models[setup.teacher]]
    if target == "best-student":
        return max(accs[setup.models[k]] for k in setup.students)
    try:
        value = float(target)
    except ValueError:
        raise MoskdError(f"--target {target}: choose teacher, best-student or an accuracy in (0, 1]") from None
    if not 0 < value <= 1:
        raise MoskdError(f"--target {target}: an accuracy lies in (0, 1]")
    return value


def split_choose_learn(select: dict, heldout: list[int] | None, spare: dict | None) -> tuple[dict, dict | None, str]:
    """(choosing images, learning images, where the learning images come from)."""
    n = len(select["labels"])
    held = np.asarray(heldout if heldout else range(n), dtype=np.int64)
    choose = {k: v[held] for k, v in select.items() if isinstance(v, np.ndarray) and len(v) == n}
    if spare is not None and len(spare.get("labels", [])):
        return choose, spare, "spare"
    rest = np.setdiff1d(np.arange(n), held)
    if len(rest) < 20:
        return choose, None, "none (too few select images outside the selector's held-out part)"
    return choose, {k: v[rest] for k, v in select.items() if isinstance(v, np.ndarray) and len(v) == n}, "select"


def fit_policy(setup: Setup, select: dict, heldout: list[int] | None, spare: dict | None = None,
               target: str = "teacher", budget_macs: float | None = None) -> tuple[Policy, list[Scored]]:
    """The deployed policy, chosen on the choosing images, and every candidate scored there."""
    choose, learn, source = split_choose_learn(select, heldout, spare)
    scored = [score(p, choose) for p in candidates(setup, choose, learn, with_selector="selector_scores" in choose)]
    acc_target = resolve_target(target, choose, setup)
    best = choose_point(scored, acc_target, budget_macs)
    if best is None:
        raise MoskdError(f"no policy fits within --budget-macs {budget_macs:,.0f}; the cheapest needs "
                         f"{min(p.macs for p in scored):,.0f}")
    # a copy: the scored candidate keeps its own target (its chain), which the summary reuses
    p = dataclasses.replace(best.policy)
    p.target = {"rule": f"fewest MACs reaching {target}" if budget_macs is None else "most accurate within budget",
                "target": target, "target_accuracy": acc_target, "budget_macs": budget_macs,
                "select_images": int(len(choose["labels"])), "learn_images": source if learn is None else
                f"{source} ({len(learn['labels'])} images)", "select_accuracy": best.accuracy,
                "select_macs_per_image": best.macs, "candidates": len(scored)}
    return p, scored


# ---------------------------------------------------------------- refitting thresholds


def _answer_path(policy: Policy, k: int) -> list[int]:
    """The route indices whose answers make the answer at model k (a committee averages them)."""
    if policy.selector and k in policy.entry["students"]:
        return [k]
    into = next((s for s in policy.steps if s.target == k), None)
    return ([] if into is None else _answer_path(policy, into.source)) + [k]


def refit_thresholds(policy: Policy, logits: dict, scores: np.ndarray | None, labels: np.ndarray,
                     index=None) -> tuple[Policy, dict]:
    """The same policy (entry, chain, deferral rules, combine) with its deferral thresholds chosen again
    on other outputs of its models (the int8 ones: quantization moves confidences), on the choosing
    images `index`, by the rule the fit used: fewest MACs reaching the policy's recorded target
    accuracy, or the most accurate within its MAC budget. The thresholds it had are one candidate, so
    the refit is never worse on the choosing images by that rule. `logits`: model name -> (N, C) for
    the models the policy reaches. Returns (policy, record)."""
    idx = np.arange(len(labels)) if index is None else np.asarray(index, dtype=np.int64)
    y = labels[idx]
    L = {k: logits[m][idx] for k, m in enumerate(policy.models) if m in logits}
    S = None if scores is None else scores[idx]
    target, budget = policy.target.get("target_accuracy"), policy.target.get("budget_macs")

    def run(p: Policy) -> Scored:
        d = decide(p, len(y), lambda k, i: L[k][i], S)
        right = d.pred == y
        return Scored(p, float(right.mean()), float(d.macs.mean()), right, {})

    before = run(policy)
    record = {"select_images": int(len(y)), "target_accuracy": target, "budget_macs": budget,
              "before": {"policy": policy.describe(), "thresholds": [s.threshold for s in policy.steps],
                         "select_accuracy": before.accuracy, "select_macs_per_image": before.macs}}
    if not policy.steps or (target is None and budget is None):
        record.update(candidates=1, refit=False,
                      why="no deferral step" if not policy.steps else "the policy records no target to refit to")
        return policy, record
    groups: dict = {}  # steps with one score, threshold and target share one threshold (the hybrid's)
    for i, s in enumerate(policy.steps):
        groups.setdefault((s.score, round(s.threshold, 6), s.target), []).append(i)
    points = 20 if len(groups) == 1 else 11
    probs = {k: softmax(v) for k, v in L.items()}
    grids = []
    for members in groups.values():
        conf = [policy.steps[i].scores(chain_answers(probs, _answer_path(policy, policy.steps[i].source),
                                                     policy.combine)[-1]) for i in members]
        grids.append(thresholds(np.concatenate(conf), points))
    combos = {tuple(c) for c in np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(grids), -1).T.tolist()}
    scored = [before]
    for combo in sorted(combos):
        steps = list(policy.steps)
        for t, members in zip(combo, groups.values()):
            for i in members:
                s = steps[i]
                steps[i] = Step(s.source, s.target, s.score, float(t), s.rule)
        scored.append(run(Policy(policy.family, policy.models, policy.macs, policy.entry, steps, policy.combine,
                                 dict(policy.target), policy.version)))
    best = choose_point(scored, target, budget) or before
    p = best.policy
    if p is not policy:
        p.target = {**policy.target, "select_accuracy": best.accuracy, "select_macs_per_image": best.macs,
                    "refit": "thresholds chosen again on the deployed (int8) models' select outputs"}
    record.update(candidates=len(scored), refit=p is not policy,
                  after={"policy": p.describe(), "thresholds": [s.threshold for s in p.steps],
                         "select_accuracy": best.accuracy, "select_macs_per_image": best.macs})
    return p, record
