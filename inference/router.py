"""The router: run the selector, then only the chosen student for each image.

For a batch: selector scores (sigmoid: P(student right)) -> one route per image -> the images of
each route gathered and sent as ONE sub-batch to that student only -> results scattered back in
input order. Every model is in eval mode (batch norm uses running statistics), and each route is
decided from the image's own scores, so an image's prediction never depends on the rest of its
batch.

Route rule (selector.model.route_from_scores): each score is charged knob x the student's relative
MACs (the operating knob was chosen on `select` by trainSelector), the best charged score wins;
scores within the selector's tie margin of the best count as a tie, and a tie goes to the cheaper
student (students are kept in ascending-MAC order), since the selector sees no accuracy difference
and the cheaper one saves compute.

Cascade (escalate=TAU): images whose best student score is below TAU go to the teacher instead.
Scores lie in [0, 1], so TAU = 0 never escalates and TAU > 1 sends every image to the teacher.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import nn

from inference.bundle import TEACHER
from moskd.errors import MoskdError
from moskd.models import adapt_input, build_model_from_checkpoint
from moskd.precision import Precision, policy
from moskd.run import RunDir
from moskd.loaded import Student
from selector.model import relative_costs, route_from_scores



class Routed(NamedTuple):
    logits: torch.Tensor  # (B, C) logits of the model each image was routed to
    routes: torch.Tensor  # (B,) index into Router.route_names: students first, then the teacher
    scores: torch.Tensor  # (B, S) selector scores in [0, 1], students in route order


class Router(nn.Module):
    def __init__(self, selector: nn.Module, students: Sequence[nn.Module], teacher: nn.Module | None = None,
                 escalate: float | None = None, tie_margin: float = 0.0, names: Sequence[str] | None = None,
                 knob: float = 0.0, costs: torch.Tensor | None = None):
        super().__init__()
        if escalate is not None and teacher is None:
            raise MoskdError("--escalate needs the teacher; run teacherTrain --run-dir RUN first")
        self.selector = selector.eval()
        self.students = nn.ModuleList(students).eval()
        self.teacher = teacher.eval() if teacher is not None else None
        self.escalate, self.tie_margin, self.knob = escalate, tie_margin, knob
        self.costs = costs  # (S,) MACs relative to the dearest student; None = knob has no effect
        self.names = list(names) if names is not None else [f"student{i}" for i in range(len(students))]
        self.route_names = self.names + [TEACHER]  # route len(students) = the teacher
        self.precision: Precision | None = None  # set by load_router: layout and autocast of every forward

    def _route_models(self) -> list[nn.Module]:
        return [*self.students, *([self.teacher] if self.teacher is not None else [])]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.selector(x).float().sigmoid()

    def routes(self, scores: torch.Tensor) -> torch.Tensor:
        route = route_from_scores(scores, self.tie_margin, self.knob, self.costs)
        if self.escalate is not None:
            unsure = scores.max(1).values < self.escalate  # no student looks safe enough
            route = torch.where(unsure, torch.full_like(route, len(self.students)), route)
        return route

    def dispatch(self, x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        """Each route's images as one sub-batch to its model only; outputs back in input order."""
        models = self._route_models()
        if len(x) == 0:
            return models[0](x)
        if routes.min() < 0 or routes.max() >= len(models):
            raise ValueError(f"routes must lie in 0..{len(models) - 1}")
        out = None
        for r, model in enumerate(models):
            idx = (routes == r).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue  # this model does no work for this batch
            y = model(x.index_select(0, idx))
            if out is None:
                out = y.new_empty((len(x), y.shape[1]))
            out.index_copy_(0, idx, y)
        return out

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Routed:
        prec = self.precision
        if prec is not None:
            x = prec.input(x)
        with prec.autocast() if prec is not None else contextlib.nullcontext():
            scores = self.scores(x)
            routes = self.routes(scores)
            return Routed(self.dispatch(x, routes).float(), routes, scores)


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


def load_router(run_dir: str | Path, escalate: float | None = None, device="cpu", with_teacher: bool = False
                ) -> RunModels:
    """The run's selector and its students (route order from the selector card); the teacher when
    escalating or when asked for (evaluation)."""
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
    teacher, teacher_card = None, None
    # every model gets the batch preprocessed per the selector card (= its cheapest student's)
    if escalate is not None or with_teacher:
        teacher, teacher_card = run.load_teacher(dataset=card["dataset"], num_classes=classes, like=card,
                                                 device=device)
    for s in students:
        s.model = adapt_input(s.model, s.card, card, s.path)
    selector_model = build_model_from_checkpoint(sel).to(device)
    router = Router(selector_model, [s.model for s in students], teacher if escalate is not None else None,
                    escalate, float(card.get("tie_margin", 0.0)), [s.name for s in students],
                    knob=float(card.get("knob", 0.0)), costs=relative_costs([s.macs for s in students]))
    teacher = teacher.eval() if teacher is not None else None
    router.precision = prec = policy(device)  # inference policy: fp32 on the CPU, as the bundle runs
    prec.model(router)
    if teacher is not None:
        prec.model(teacher)
    return RunModels(router, card, sel.get("config") or {}, students, teacher, teacher_card)
