"""The selector: a 3-layer CNN giving one "will this student be right?" score per student.

The original project's design (three blocks of conv3x3 + batch norm + ReLU + max-pool) with a
global-pooling head, so it works at any input size and for any number of students. Its logits
are trained with binary cross-entropy against each student's softmax probability of the true
class (or its 0/1 correctness), then calibrated per student on held-out `select` images (Platt
scaling, kept in the model as two buffers), so sigmoid(logit) is the selector's estimate that the
student gets the image right.

Registered as `selector_cnn`, so moskd.models.build_model_from_checkpoint rebuilds it from a
selector checkpoint's card (the selector stage declares this module, so moskd.models imports it
on demand).

The routing rule lives here too because training (checkpoint selection by routed accuracy) and
the inference router must apply exactly the same rule.
"""
from __future__ import annotations

import torch
from torch import nn

from moskd.models import register_model

MAC_BUDGET = 0.05  # the selector may cost at most this share of the cheapest student's MACs


def _block(in_chans: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
        # ceil_mode keeps odd sizes from shrinking to nothing (8 -> 4 -> 2 -> 1, 5 -> 3 -> 2 -> 1)
        nn.MaxPool2d(2, ceil_mode=True),
    )


class SelectorCNN(nn.Module):
    def __init__(self, num_students: int, in_chans: int = 3, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            _block(in_chans, width), _block(width, 2 * width), _block(2 * width, 4 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width, num_students)
        # Platt scaling per student (logit * scale + bias), fitted after training on held-out images;
        # buffers, so that an exported selector carries its calibration
        self.register_buffer("calib_scale", torch.ones(num_students))
        self.register_buffer("calib_bias", torch.zeros(num_students))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        logits = self.head(self.dropout(x))
        return logits * self.calib_scale + self.calib_bias  # (B, num_students); sigmoid -> P(student right)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # selectors saved before calibration existed: identity calibration
        for name, value in (("calib_scale", self.calib_scale), ("calib_bias", self.calib_bias)):
            state_dict.setdefault(prefix + name, value.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_model("selector_cnn")
def selector_cnn(num_classes: int, in_chans: int = 3, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """num_classes is the number of students (the registry's common signature)."""
    return SelectorCNN(num_classes, in_chans, width, dropout)


def relative_costs(macs) -> torch.Tensor:
    """Each student's MACs over the dearest student's: the unit the router's cost knob is in."""
    m = torch.as_tensor(macs, dtype=torch.float64)
    return (m / m.max()).float()


def route_from_scores(scores: torch.Tensor, tie_margin: float = 0.0, knob: float = 0.0,
                      costs: torch.Tensor | None = None) -> torch.Tensor:
    """One route per image from (B, S) scores; students are in route order (ascending MACs).

    Each score is first charged for compute: score - knob * cost, with cost the student's MACs
    relative to the dearest student (`relative_costs`). knob = 0 is the pure "most likely right"
    rule; a large positive knob sends everything to the cheapest student, a large negative one to
    the dearest, and the values in between trace the router's accuracy-vs-MACs curve (the
    operating knob is chosen on `select`). The best charged score wins, but any student within
    `tie_margin` of the best counts as a tie and the cheapest of the tied students is taken: when
    the selector cannot tell two students apart, the cheaper one costs less for the same expected
    accuracy. The rule looks only at the image's own scores, so a route never depends on the rest
    of the batch.
    """
    if knob and costs is not None:
        scores = scores - knob * costs.to(scores.device, scores.dtype)
    best = scores.max(dim=1, keepdim=True).values
    near = scores >= best - tie_margin  # the best student is always in this set
    # first True along dim 1 = the cheapest near-best student
    return near.to(torch.uint8).argmax(dim=1)


def knob_grid(scores: torch.Tensor, costs: torch.Tensor, tie_margin: float = 0.0, points: int = 21) -> list[float]:
    """Cost-knob values that sweep the router from all-dearest (first) to all-cheapest (last).

    An image leaves the cheapest student for student j once knob < (s_j - s_0 - tie_margin) /
    (c_j - c_0), so the quantiles of those switch points spread the sweep evenly over route
    shares; a margin of 1 beyond the extreme switch points pins both ends, and an even grid between
    them keeps at least `points` values when scores coincide.
    """
    s, c = scores.double(), costs.double().to(scores.device)
    if s.shape[1] < 2 or len(s) == 0:
        return [0.0]
    dc = (c[1:] - c[0]).clamp_min(1e-9)
    switch = ((s[:, 1:] - s[:, :1] - tie_margin) / dc).flatten()
    lo, hi = switch.min().item() - 1.0, switch.max().item() + 1.0
    qs = torch.quantile(switch, torch.linspace(0, 1, points, dtype=torch.float64)).tolist()
    even = torch.linspace(lo, hi, points, dtype=torch.float64).tolist()
    return sorted({round(v, 6) for v in [lo, hi, 0.0, *qs, *even]})
