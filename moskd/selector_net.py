"""The selector: a 3-layer CNN giving one "will this student be right?" score per student.

The original project's design (three blocks of conv3x3 + batch norm + ReLU + max-pool) with a
global-pooling head, so it works at any input size and for any number of students. Its logits
are trained with binary cross-entropy against each student's softmax probability of the true
class (or its 0/1 correctness), then calibrated per student on held-out `select` images (Platt
scaling, kept in the model as two buffers), so sigmoid(logit) is the selector's estimate that the
student gets the image right.

It is a model like the others: moskd.models lists it in its registry as `selector_cnn`, so
build_model_from_checkpoint rebuilds it from a selector checkpoint's card.

The routing rule it feeds (the cost knob, the tie margin) is the routing policy's entry rule and
lives in moskd.policy, the one place every path decides through.
"""
from __future__ import annotations

import torch
from torch import nn


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


def selector_cnn(num_classes: int, in_chans: int = 3, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """num_classes is the number of students (the registry's common signature)."""
    return SelectorCNN(num_classes, in_chans, width, dropout)
