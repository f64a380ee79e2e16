"""The one rule that chooses an operating point, wherever one is chosen on `select`: the selector's
knob (trainSelector), every routing-policy family's deployed point and the report's anchors
(inference.policy_fit, inference.summary). A point is anything with `accuracy` (0..1, on the
choosing images) and `macs` (per image)."""
from __future__ import annotations

from typing import Protocol, Sequence, TypeVar


class Point(Protocol):
    accuracy: float
    macs: float


P = TypeVar("P", bound=Point)


def choose_point(points: Sequence[P], target_accuracy: float | None = None, budget: float | None = None
                 ) -> P | None:
    """With a budget: the most accurate point within it (ties: fewer MACs). Else the fewest MACs whose
    accuracy reaches the target (ties: more accurate); the most accurate (ties: fewer MACs) when none
    does or no target is given."""
    if not points:
        return None
    if budget is not None:
        ok = [p for p in points if p.macs <= budget + 1e-6]
        return max(ok, key=lambda p: (p.accuracy, -p.macs)) if ok else None
    reach = [] if target_accuracy is None else [p for p in points if p.accuracy >= target_accuracy - 1e-12]
    if reach:
        return min(reach, key=lambda p: (p.macs, -p.accuracy))
    return max(points, key=lambda p: (p.accuracy, -p.macs))
