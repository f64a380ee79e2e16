"""The selector: a 3-layer CNN giving one "will this student be right?" score per student.

The original project's design (three blocks of conv3x3 + batch norm + ReLU + max-pool) with a
global-pooling head, so it works at any input size and for any number of students. Its logits
are trained with binary cross-entropy against each student's correctness, so sigmoid(logit) is the
selector's estimate that the student gets the image right.

Registered as `selector_cnn`, so moskd.checkpoint.build_model_from_checkpoint rebuilds it from a
selector checkpoint's card (import this module first).

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))  # (B, num_students) logits; sigmoid -> P(student right)


@register_model("selector_cnn")
def selector_cnn(num_classes: int, in_chans: int = 3, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """num_classes is the number of students (the registry's common signature)."""
    return SelectorCNN(num_classes, in_chans, width, dropout)


def route_from_scores(scores: torch.Tensor, tie_margin: float = 0.0) -> torch.Tensor:
    """One route per image from (B, S) scores; students are in route order (ascending MACs).

    Best score wins, but any student within `tie_margin` of the best counts as a tie and the
    cheapest of the tied students is taken: when the selector cannot tell two students apart,
    the cheaper one costs less for the same expected accuracy. The rule looks only at the
    image's own scores, so a route never depends on the rest of the batch.
    """
    best = scores.max(dim=1, keepdim=True).values
    near = scores >= best - tie_margin  # the best student is always in this set
    # first True along dim 1 = the cheapest near-best student
    return near.to(torch.uint8).argmax(dim=1)
