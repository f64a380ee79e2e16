"""The routing policy: the whole per-image decision of which models run and which answer counts.

One object, numpy only (no torch), so the report's replay, the run's torch router, the bundle
(torch and ONNX) and the server all decide through the same code:

    policy = Policy.from_dict(json.loads(Path("RUN/policy.json").read_text()))
    d = decide(policy, n, run_model, selector_scores)   # run_model(k, idx) -> logits of model k on idx

A policy names
  models    the models it may run, in route order (ascending MACs, the teacher last), with `macs`;
  entry     where an image starts: {"rule": "fixed", "model": k}, or {"rule": "selector", ...}: the
            selector's scores (one per entry student, sigmoid = P(student right)) charged
            `knob` x the student's MACs relative to the dearest, the best charged score wins and
            any within `tie_margin` of it ties, won by the cheapest (`entry_routes`);
  steps     deferral steps: after model `source` has answered, a deferral score of the current
            answer and a threshold decide whether model `target` (later in route order) runs too.
            score "max_softmax" is the answer's top probability; "learned" is 1 - P(running the
            next model helps), a logistic rule on the answer's probability features (`features`),
            its coefficients inline. An image defers when its score is below the threshold
            (0 never defers; a threshold above 1 always does, for max_softmax);
  combine   how answers combine when an image goes on: "replace" (the later model answers) or
            "mean" (the mean of the probabilities of every model run so far: a committee);
  target    how the operating point was chosen and what it scored on `select`.

The runtime runs each model once per batch, only on the images whose chain reaches it, in route
order (a step only goes to a later model), and computes the next step from those outputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

VERSION = 1
TEACHER = "teacher"  # the route name of the teacher, the last model of every policy that reaches it
SCORES = ("max_softmax", "learned")
COMBINES = ("replace", "mean")
ALWAYS = 1.001  # a max-softmax threshold above any probability: always defer
TOP = 3  # sorted probabilities among the learned rule's features


class PolicyError(ValueError):
    """A policy file that does not describe a runnable policy; the message names the field."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (so replay on saved float32/float16 logits and the runtime agree)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def relative_costs(macs) -> np.ndarray:
    """Each entry student's MACs over the dearest one's: the unit the selector's cost knob is in."""
    m = np.asarray(macs, dtype=np.float64)
    return (m / m.max()).astype(np.float32)


def entry_routes(scores: np.ndarray, tie_margin: float = 0.0, knob: float = 0.0,
                 costs: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, S) selector scores (entry students in route order) -> (N,) index of the student each image
    starts at.

    Each score is charged knob x cost (cost: the student's MACs relative to the dearest). knob 0 is
    the pure "most likely right" rule; a large positive knob sends everything to the cheapest student,
    a large negative one to the dearest. Any student within `tie_margin` of the best charged score
    ties, and the cheapest of the tied wins: when the selector cannot tell two students apart, the
    cheaper one costs less for the same expected accuracy. float32 throughout, so that scores coming
    from torch or onnxruntime tie the same way. An image's route depends on its own scores only.
    """
    s = np.asarray(scores, dtype=np.float32)
    if knob and costs is not None:
        s = s - np.float32(knob) * np.asarray(costs, dtype=np.float32)
    best = s.max(axis=1, keepdims=True)
    near = s >= best - np.float32(tie_margin)  # the best student is always in this set
    return near.argmax(axis=1).astype(np.int64)  # first True = the cheapest near-best student


def knob_grid(scores: np.ndarray, costs: np.ndarray, tie_margin: float = 0.0, points: int = 21) -> list[float]:
    """Cost-knob values that sweep the selector from all-dearest (first) to all-cheapest (last).

    An image leaves the cheapest student for student j once knob < (s_j - s_0 - tie_margin) /
    (c_j - c_0), so the quantiles of those switch points spread the sweep evenly over route shares;
    a margin of 1 beyond the extreme switch points pins both ends, and an even grid between them keeps
    at least `points` values when scores coincide.
    """
    s, c = np.asarray(scores, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2 or len(s) == 0:
        return [0.0]
    dc = np.maximum(c[1:] - c[0], 1e-9)
    switch = ((s[:, 1:] - s[:, :1] - tie_margin) / dc).ravel()
    lo, hi = float(switch.min()) - 1.0, float(switch.max()) + 1.0
    qs = np.quantile(switch, np.linspace(0, 1, points)).tolist()
    even = np.linspace(lo, hi, points).tolist()
    return sorted({round(v, 6) for v in [lo, hi, 0.0, *qs, *even]})


# ---------------------------------------------------------------- deferral scores


def features(probs: np.ndarray) -> np.ndarray:
    """The learned rule's view of an answer: its TOP sorted probabilities, the margin between the top
    two, the entropy, and the predicted class one-hot. (N, C) -> (N, TOP + 2 + C)."""
    p = np.asarray(probs, dtype=np.float64)
    n, c = p.shape
    top = -np.sort(-p, axis=1)[:, :TOP]
    if top.shape[1] < TOP:
        top = np.pad(top, ((0, 0), (0, TOP - top.shape[1])))
    margin = top[:, :1] - top[:, 1:2]
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(1, keepdims=True)
    onehot = np.zeros((n, c))
    onehot[np.arange(n), p.argmax(1)] = 1.0
    return np.concatenate([top, margin, entropy, onehot], axis=1)


def learned_gain(rule: dict, probs: np.ndarray) -> np.ndarray:
    """P(running the next model makes the answer right), from the rule's inline logistic parameters."""
    f = features(probs)
    z = ((f - np.asarray(rule["mean"])) / np.asarray(rule["scale"])) @ np.asarray(rule["coef"]) + rule["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Step:
    """After model `source` answered: run model `target` too when score(answer) < threshold."""
    source: int
    target: int
    score: str = "max_softmax"
    threshold: float = 0.0
    rule: Optional[dict] = None  # learned: {"coef": [...], "intercept": b, "mean": [...], "scale": [...]}

    def scores(self, probs: np.ndarray) -> np.ndarray:
        if self.score == "max_softmax":
            return probs.max(axis=1)
        return 1.0 - learned_gain(self.rule, probs)


# ---------------------------------------------------------------- the policy


@dataclass
class Policy:
    family: str
    models: list[str]
    macs: list[float]
    entry: dict
    steps: list[Step] = field(default_factory=list)
    combine: str = "replace"
    target: dict = field(default_factory=dict)
    version: int = VERSION

    def __post_init__(self):
        self.check()

    @property
    def selector(self) -> bool:
        return self.entry.get("rule") == "selector"

    @property
    def selector_macs(self) -> float:
        return float(self.entry.get("macs", 0.0)) if self.selector else 0.0

    def used(self) -> list[int]:
        """The models an image can reach (route order indices)."""
        start = self.entry["students"] if self.selector else [self.entry["model"]]
        seen, todo = set(start), list(start)
        while todo:
            k = todo.pop()
            for s in self.steps:
                if s.source == k and s.target not in seen:
                    seen.add(s.target)
                    todo.append(s.target)
        return sorted(seen)

    def step_from(self, k: int) -> Optional[Step]:
        return next((s for s in self.steps if s.source == k), None)

    def check(self) -> None:
        n = len(self.models)
        if self.version != VERSION:
            raise PolicyError(f"policy version {self.version}; this moskd reads version {VERSION}")
        if len(self.macs) != n or n == 0:
            raise PolicyError("models and macs must be non-empty lists of one length")
        if self.combine not in COMBINES:
            raise PolicyError(f"combine {self.combine!r}: choose one of {', '.join(COMBINES)}")
        rule = self.entry.get("rule")
        if rule == "fixed":
            if not 0 <= int(self.entry.get("model", -1)) < n:
                raise PolicyError(f"entry model must be a route index 0..{n - 1}")
        elif rule == "selector":
            st = self.entry.get("students") or []
            if not st or any(not 0 <= k < n for k in st) or list(st) != sorted(st):
                raise PolicyError("entry students must be ascending route indices")
            for key in ("knob", "tie_margin", "costs"):
                if key not in self.entry:
                    raise PolicyError(f"the selector entry needs {key!r}")
        else:
            raise PolicyError(f"entry rule {rule!r}: choose fixed or selector")
        sources = [s.source for s in self.steps]
        if len(set(sources)) != len(sources):
            raise PolicyError("at most one deferral step per model")
        for s in self.steps:
            if not 0 <= s.source < s.target < n:
                raise PolicyError(f"step {s.source}->{s.target}: a step goes to a later model in route order")
            if s.score not in SCORES:
                raise PolicyError(f"step score {s.score!r}: choose one of {', '.join(SCORES)}")
            if s.score == "learned" and not s.rule:
                raise PolicyError("a learned step needs its rule's parameters")

    def describe(self) -> str:
        """One line: the chain, its thresholds and how answers combine."""
        start = ("selector(" + "|".join(self.models[k] for k in self.entry["students"])
                 + f", knob {self.entry['knob']:.4g})") if self.selector else self.models[self.entry["model"]]
        by_rule: dict = {}
        for s in self.steps:  # steps with one rule, threshold and target read as one
            by_rule.setdefault((s.score, round(s.threshold, 6), s.target), []).append(self.models[s.source])
        steps = "".join(f" >[{score} < {t:.4g}] {self.models[target]}" for (score, t, target) in by_rule)
        return f"{self.family}: {start}{steps}" + (" (committee: mean probabilities)" if self.combine == "mean" else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        try:
            d = dict(d)
            d["steps"] = [Step(**s) for s in d.get("steps", [])]
            return cls(**d)
        except (TypeError, KeyError, ValueError) as e:
            raise PolicyError(f"not a moskd routing policy ({e})") from None


# ---------------------------------------------------------------- deciding


@dataclass
class Decision:
    probs: np.ndarray  # (N, C) float64: the answer's probabilities
    route: np.ndarray  # (N,) int64: the model that answered last (route order)
    models: np.ndarray  # (N,) int64: bit mask of the models that ran (bit k = route order k)
    macs: np.ndarray  # (N,) float64: MACs spent on each image, the selector's included
    entry: np.ndarray  # (N,) int64: the model each image started at
    logits: Optional[np.ndarray] = None  # (N, C) raw logits of the model that answered last (runtime only)

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def decide(policy: Policy, n: int, run_model: Callable[[int, np.ndarray], np.ndarray],
           scores: Optional[np.ndarray] = None, keep_logits: bool = False) -> Decision:
    """The policy's decision for n images.

    run_model(k, idx) returns the logits (len(idx), C) of model k (route order) on images idx; it is
    called at most once per model, in route order, and only with the images that reach it. scores are
    the selector's (N, S) scores (entry students in route order) when the entry rule is the selector.
    """
    if policy.selector:
        if scores is None:
            raise PolicyError("this policy starts with the selector: pass its scores")
        e = policy.entry
        entry = np.asarray(e["students"], dtype=np.int64)[entry_routes(scores, e["tie_margin"], e["knob"], e["costs"])]
    else:
        entry = np.full(n, int(policy.entry["model"]), dtype=np.int64)
    current = entry.copy()
    active = np.ones(n, dtype=bool)
    route = entry.copy()
    mask = np.zeros(n, dtype=np.int64)
    macs = np.full(n, policy.selector_macs, dtype=np.float64)
    probs = sums = logits = None
    count = np.zeros(n, dtype=np.float64)
    for k in range(len(policy.models)):
        idx = np.flatnonzero(active & (current == k))
        if idx.size == 0:
            continue  # a model no image reaches costs nothing
        out = np.asarray(run_model(k, idx))
        p = softmax(out)
        if probs is None:
            probs = np.zeros((n, p.shape[1]))
            sums = np.zeros_like(probs)
            logits = np.zeros((n, p.shape[1]), dtype=np.float32) if keep_logits else None
        if policy.combine == "mean":
            sums[idx] += p
            count[idx] += 1
            answer = sums[idx] / count[idx, None]
        else:
            answer = p
        probs[idx] = answer
        if logits is not None:
            logits[idx] = out
        mask[idx] |= 1 << k
        macs[idx] += policy.macs[k]
        route[idx] = k
        step = policy.step_from(k)
        if step is None:
            active[idx] = False
            continue
        go = step.scores(answer) < step.threshold
        current[idx[go]] = step.target
        active[idx[~go]] = False
    if probs is None:  # no images
        probs = np.zeros((0, 0))
    return Decision(probs, route, mask, macs, entry, logits)


def replay(policy: Policy, arrays: dict, index: Optional[np.ndarray] = None) -> Decision:
    """The policy's decision on saved per-image arrays (RUN/eval/<split>.npz: logits_<model>,
    selector_scores), optionally on a subset of the images."""
    def take(a):
        return a if index is None else a[index]

    logits = [take(arrays[f"logits_{m}"]) for m in policy.models]
    scores = take(arrays["selector_scores"]) if policy.selector else None
    n = len(logits[0])
    return decide(policy, n, lambda k, idx: logits[k][idx], scores)


def router_policy(models: list[str], macs: list[float], students: list[int], knob: float, tie_margin: float,
                  selector_macs: float, family: str = "router") -> Policy:
    """The selector alone: each image goes to the student its charged scores pick, which answers."""
    costs = relative_costs([macs[k] for k in students]).tolist()
    return Policy(family, list(models), [float(m) for m in macs],
                  {"rule": "selector", "students": list(students), "knob": float(knob),
                   "tie_margin": float(tie_margin), "costs": costs, "macs": float(selector_macs)})
