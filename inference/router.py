"""The router: the run's routing policy (moskd.policy) executed on torch models.

For a batch: the selector's scores when the policy starts with the selector (sigmoid: P(student
right)), then moskd.policy.decide, which asks for each model's outputs only on the images whose
chain reaches it; each such sub-batch runs as ONE batch on that model (or, with pow2_batches, as its
power-of-two chunks: moskd.batch_shapes, which streamed prediction uses to keep memory flat), and
results come back in input order. The policy alone decides; this module only runs the models it asks for. Every model
is in eval mode (batch norm uses running statistics) and every step reads an image's own outputs,
so an image's answer never depends on the rest of its batch.
"""
from __future__ import annotations

import dataclasses

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from moskd.errors import MoskdError
from moskd.models import adapt_input, build_model_from_checkpoint
from moskd.atomic import read_json
from moskd.batch_shapes import call_slices
from moskd.policy import TEACHER, Policy, PolicyError, decide, router_policy
from moskd.precision import Precision, choose_precision
from moskd.profile import count_macs
from moskd.run import RunDir, Student



class Routed(NamedTuple):
    logits: torch.Tensor  # (B, C) log-probabilities of the answer (the committee's mean under combine "mean")
    routes: torch.Tensor  # (B,) route index of the model that answered last (policy.models order)
    scores: torch.Tensor  # (B, S) selector scores in [0, 1] (zeros when the policy does not start there)
    models: torch.Tensor  # (B,) bit mask of the models that ran (bit k = policy.models[k])
    macs: torch.Tensor  # (B,) MACs spent per image, the selector's included


def answer_logits(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities of an answer: softmax of them gives the answer's probabilities back."""
    return np.log(np.clip(probs, 1e-30, None)).astype(np.float32)


class Router(nn.Module):
    """models: one module per policy.models entry (None for a model the policy never reaches).
    pow2_batches: every model, the selector included, runs each of its batches in power-of-two chunks
    (moskd.batch_shapes), so it sees at most log2(batch) + 1 shapes however the images route. max_call:
    no model runs more than this many images at once (a server gathering deferrals: moskd serve --gather)."""

    def __init__(self, policy: Policy, models: Sequence[nn.Module | None], selector: nn.Module | None,
                 num_students: int | None = None, num_classes: int | None = None, pow2_batches: bool = False,
                 max_call: int | None = None):
        super().__init__()
        if len(models) != len(policy.models):
            raise ValueError(f"the policy runs {len(policy.models)} models, {len(models)} given")
        for k in policy.used():
            if models[k] is None:
                raise MoskdError(f"the routing policy runs {policy.models[k]}, which this run does not hold")
        if policy.selector and selector is None:
            raise MoskdError("the routing policy starts with the selector; the run holds none")
        self.policy = policy
        self.models = nn.ModuleList([m.eval() if m is not None else nn.Identity() for m in models])
        self.selector = selector.eval() if selector is not None else None
        self.route_names = list(policy.models)
        self.num_students = num_students if num_students is not None else len(policy.models) - 1
        self.names = self.route_names[:self.num_students]  # the students, in route order
        self.num_classes = num_classes  # the width of an empty batch's answer (None: ask a model)
        self.precision: Precision | None = None  # set by load_router: layout and autocast of every forward
        self.pow2_batches, self.max_call = pow2_batches, max_call

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        slices = call_slices(len(x), self.pow2_batches, self.max_call)
        if len(slices) <= 1:  # the whole batch (or an empty one) in one call
            return model(x)
        return torch.cat([model(x[s]) for s in slices])

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.selector is None:
            return x.new_zeros((len(x), self.num_students), dtype=torch.float32)
        return self._forward(self.selector, x).float().sigmoid()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Routed:
        prec = self.precision
        if prec is not None:
            x = prec.input(x)
        with prec.autocast() if prec is not None else contextlib.nullcontext():
            scores = self.scores(x)
            if len(x) == 0:  # no image reaches any model: an empty answer of the right width
                empty = (x.new_zeros((0, self.num_classes), dtype=torch.float32) if self.num_classes is not None
                         else torch.log_softmax(self.models[self.policy.used()[0]](x).float(), 1))
                none = torch.zeros(0, dtype=torch.int64, device=x.device)
                return Routed(empty, none, scores, none, none.double())

            def run_model(k: int, idx: np.ndarray) -> np.ndarray:
                sub = x.index_select(0, torch.from_numpy(idx).to(x.device))
                return self._forward(self.models[k], sub).float().cpu().numpy()

            d = decide(self.policy, len(x), run_model, scores.cpu().numpy())
        dev = x.device
        return Routed(torch.from_numpy(answer_logits(d.probs)).to(dev), torch.from_numpy(d.route).to(dev),
                      scores, torch.from_numpy(d.models).to(dev), torch.from_numpy(d.macs).to(dev))


# ---------------------------------------------------------------- loading a run


@dataclass
class RunModels:
    """A run's router with what evaluation and prediction need about its models."""
    router: Router
    selector_card: dict
    selector_config: dict  # trainSelector's resolved config: the run's data and split settings
    students: list[Student]
    teacher: nn.Module | None  # loaded when escalating or when asked for (evaluation scores it alone)
    teacher_card: dict | None

    @property
    def class_names(self) -> list[str]:
        return list(self.students[0].card["class_names"])

    @property
    def card(self) -> dict:
        """How inputs are preprocessed for the whole router (input size, mean, std, dataset)."""
        return self.selector_card


def load_policy(run: RunDir, limit: int | None = None) -> Policy | None:
    """RUN/policy.json (RUN/report-limit<N>/ with a limit) as a Policy, or None when none was fitted yet."""
    path = run.report(limit).policy
    if not path.is_file():
        return None
    try:
        return Policy.from_dict(read_json(path))
    except PolicyError as e:
        raise MoskdError(f"{path}: {e}; refit it with moskd policy --run-dir {run.root}") from None


def selector_policy(card: dict, students: list[Student], teacher_macs: float) -> Policy:
    """The selector alone at trainSelector's knob: what a run routes by before `moskd policy` fitted
    RUN/policy.json."""
    models = [s.name for s in students] + [TEACHER]
    macs = [float(s.macs) for s in students] + [float(teacher_macs)]
    return router_policy(models, macs, list(range(len(students))), float(card.get("knob", 0.0)),
                         float(card.get("tie_margin", 0.0)), float(card.get("selector_macs", 0)))


def load_router(run_dir: str | Path, device="cpu", with_teacher: bool = False, policy: Policy | None = None
                ) -> RunModels:
    """The run's selector, its students (route order from the selector card) and the teacher when the
    routing policy reaches it or when asked for (evaluation), executing RUN/policy.json (or `policy`;
    without either, the selector alone at trainSelector's knob)."""
    run = RunDir(run_dir)
    sel = run.load_selector()
    card = sel["card"]
    students = [run.load_student(n, dataset=card["dataset"], device=device) for n in card["students"]]
    for s, macs in zip(students, card.get("student_macs", [])):
        if s.macs != macs:  # another architecture now sits in that folder: the selector's labels are stale
            raise MoskdError(f"{s.path} changed since the selector was trained ({s.macs:,} MACs, selector knew "
                             f"{macs:,}); rerun trainSelector --run-dir {run.root} --force")
    classes = students[0].card["num_classes"]
    for s in students[1:]:
        if s.card["num_classes"] != classes:
            raise MoskdError(f"{s.path}: {s.card['num_classes']} classes, {students[0].path} has {classes}; "
                             f"retrain the students on one dataset")
    policy = policy if policy is not None else load_policy(run)
    names = [s.name for s in students]
    if policy is not None and policy.models[:-1] != names:
        raise MoskdError(f"{run.report().policy}: routes {', '.join(policy.models[:-1])}, the selector {', '.join(names)}; "
                         f"refit it with moskd policy --run-dir {run.root}")
    need_teacher = with_teacher or (policy is not None and len(students) in policy.used())
    teacher, teacher_card = None, None
    # every model gets the batch preprocessed per the selector card (= its cheapest student's)
    if need_teacher:
        teacher, teacher_card = run.load_teacher(dataset=card["dataset"], num_classes=classes, like=card,
                                                 device=device)
    for s in students:
        s.model = adapt_input(s.model, s.card, card, s.path)
    selector_model = build_model_from_checkpoint(sel).to(device)
    if policy is None:
        teacher_macs = count_macs(teacher, card["input_size"]) if teacher is not None else 0
        policy = selector_policy(card, students, teacher_macs)
    prec = choose_precision(device)  # inference policy: fp32 on the CPU, as the bundle runs
    for m in [selector_model, *[s.model for s in students]] + ([teacher] if teacher is not None else []):
        prec.model(m.eval())
    router = _router(policy, students, teacher, selector_model, classes, prec)
    return RunModels(router, card, sel.get("config") or {}, students, teacher, teacher_card)


def _router(policy: Policy, students: list[Student], teacher: nn.Module | None, selector: nn.Module, classes: int,
            prec: Precision) -> Router:
    uses_teacher = len(students) in policy.used()
    if uses_teacher and teacher is None:
        raise MoskdError("the routing policy escalates to the teacher, which was not loaded")
    router = Router(policy, [s.model for s in students] + [teacher if uses_teacher else None],
                    selector if policy.selector else None, len(students), classes)
    router.selector_module = selector  # evaluation reads the selector's scores whatever the policy
    router.precision = prec
    return router


def rebatched(router: Router, pow2_batches: bool, max_call: int | None = None) -> Router:
    """A Router over the same modules, policy and precision, with pow2_batches and max_call as given."""
    new = Router(router.policy, list(router.models), router.selector, router.num_students, router.num_classes,
                 pow2_batches, max_call)
    new.precision = router.precision
    if hasattr(router, "selector_module"):
        new.selector_module = router.selector_module
    return new


def routed_by(run: RunModels, policy: Policy) -> RunModels:
    """The run's loaded models routed by `policy`: a new Router over the same modules, so a policy
    known only after evaluation (fitted on its arrays) costs no second read of any checkpoint."""
    names = [s.name for s in run.students]
    if policy.models[:-1] != names:
        raise MoskdError(f"the policy routes {', '.join(policy.models[:-1])}, the run's selector {', '.join(names)}; "
                         f"refit it with moskd policy")
    old = run.router
    router = _router(policy, run.students, run.teacher, old.selector_module, old.num_classes, old.precision)
    return dataclasses.replace(run, router=router)
