"""Shared helpers: run a console-script main in-process and capture its one-line errors; the
`split_run` fixture, a hand-built run whose selector splits images across both students (and the
teacher under escalation) in proportions a plain reference implementation predicts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from moskd.checkpoint import save_checkpoint
from moskd.data import load_data
from moskd.models import register_model


def run_cli(main, argv, capsys):
    """Call a console-script main; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys):
    return lambda main, argv: run_cli(main, argv, capsys)


@pytest.fixture
def one_thread():
    """Tiny models: per-op thread hand-offs cost more than they save, so run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- small stand-in architectures


class TinyCNN(nn.Module):
    """`depth` 3x3 conv + batch norm + ReLU blocks, global pooling, optional dropout and a linear
    head: a real (trainable) classifier at a fraction of a ResNet's cost, for tests of the
    training machinery rather than of an architecture."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        layers, c = [], in_chans
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        tail = [nn.Dropout(dropout)] if dropout > 0 else []
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *tail)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("test_tiny_cnn")
def tiny_cnn_factory(num_classes: int, in_chans: int = 1, width: int = 32, depth: int = 3) -> nn.Module:
    return TinyCNN(num_classes, in_chans, width, depth)


@register_model("test_small_cnn")
def small_cnn(num_classes: int, in_chans: int = 1, width: int = 16) -> nn.Module:
    """Two blocks with dropout: its dropout and batch statistics exercise the engine's per-epoch RNG
    and eval-mode handling."""
    return TinyCNN(num_classes, in_chans, width, depth=2, dropout=0.1)


class AnswerNet(nn.Module):
    """Always predicts class `answer`, with logit margin `scale`; every logit is shifted by the
    image's mean (softmax-invariant), so an image sent to the wrong place shows in the logits.
    Its convolution does no work on the output; it gives the model 9 * in_chans * width MACs per
    pixel and 10 * width parameters (in_chans 1), counted by hand in the tests."""

    def __init__(self, num_classes: int, in_chans: int = 1, answer: int = 0, scale: float = 5.0, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
        self.register_buffer("onehot", scale * nn.functional.one_hot(torch.tensor(answer), num_classes).float())

    def forward(self, x):
        return self.onehot + x.mean((1, 2, 3))[:, None] + 0.0 * self.conv(x).mean()


@register_model("test_answer")
def answer_net(num_classes: int, in_chans: int = 1, answer: int = 0, scale: float = 5.0, width: int = 4) -> nn.Module:
    return AnswerNet(num_classes, in_chans, answer, scale, width)


# ---------------------------------------------------------------- a run with known routes

SPLIT_SETTINGS = {"dataset": "digits", "split_seed": 0, "select_fraction": 0.2, "test_fraction": 0.2,
                  "image_size": 32}


@dataclass
class SplitRun:
    """A run directory (teacher, students `zero` and `one`, a hand-set selector) and the plain
    reference of what its router must do.

    The selector's first conv is a 3x3 box filter, the next two pass that channel through and the
    max-pools take its maximum, so its one feature is f = max over the image of the 3x3 mean of the
    normalised pixels (zero padded). Its head gives score(zero) = sigmoid(K (f - C)) and
    score(one) = sigmoid(-K (f - C)). Hence, with the card's tie margin M and --escalate TAU:
    f >= C - logit((1 + M) / 2) / K goes to `zero` (near-ties included), below that to `one`, and
    |f - C| < logit(TAU) / K to the teacher.
    """
    path: Path
    names = ("zero", "one")  # route order: zero is the cheaper
    answers = (0, 1, 2)  # class each route's model always predicts (zero, one, teacher)
    scales = (6.0, 3.0, 4.0)  # logit margin of each
    widths = (4, 12, 32)  # conv width of each: MACs 576 * width at 8x8, params 10 * width
    selector_width = 2
    K = 10.0
    C = 1.15
    M = 0.25  # tie margin written into the selector card
    TAU = 0.73  # an escalation threshold at which about a third of the test split escalates
    mean: float = 0.0
    std: float = 1.0

    def feature(self, images) -> np.ndarray:
        """f per image, in float64 numpy, from uint8 (N, 1, 8, 8) images."""
        x = (np.asarray(images, dtype=np.float64) / 255.0 - self.mean) / self.std
        p = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
        h, w = x.shape[-2:]
        box = sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
        return np.maximum(box.reshape(len(x), -1).max(1), 0.0)

    def scores(self, images) -> np.ndarray:
        z = self.K * (self.feature(images) - self.C)
        return np.stack([1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))], 1)

    def routes(self, images, escalate: float | None = None, tie_margin: float | None = None) -> np.ndarray:
        """0 = zero, 1 = one, 2 = teacher, by the README's rule written out by hand."""
        m = self.M if tie_margin is None else tie_margin
        out = []
        for s0, s1 in self.scores(images):
            best = max(s0, s1)
            r = 0 if s0 >= best - m else 1
            if escalate is not None and best < escalate:
                r = 2
            out.append(r)
        return np.array(out)

    def boundaries(self) -> list[float]:
        logit = lambda p: math.log(p / (1 - p))  # noqa: E731
        return [self.C, self.C - logit((1 + self.M) / 2) / self.K,
                self.C - logit(self.TAU) / self.K, self.C + logit(self.TAU) / self.K]

    def macs(self, i: int) -> int:
        return 9 * 64 * self.widths[i]

    @property
    def selector_macs(self) -> int:
        w = self.selector_width  # three conv blocks at 8x8, 4x4 and 2x2, then the head
        return 9 * 1 * w * 64 + 9 * w * 2 * w * 16 + 9 * 2 * w * 4 * w * 4 + 4 * w * 2


def _save(path: Path, role: str, arch: str, card: dict, model: nn.Module, kwargs: dict, **extra) -> None:
    save_checkpoint({"model": model.state_dict(), "ema": None, "config": dict(SPLIT_SETTINGS),
                     "card": {"role": role, "arch": arch, **card, "model_kwargs": kwargs, **extra}}, path)


def hand_set_selector(width: int, k: float, c: float) -> nn.Module:
    """A SelectorCNN whose two logits are +-k (f - c) (see SplitRun)."""
    from moskd.selector_net import SelectorCNN

    sel = SelectorCNN(2, in_chans=1, width=width).eval()
    with torch.no_grad():
        for p in sel.parameters():
            p.zero_()
        blocks = list(sel.features)
        blocks[0][0].weight[0, 0] = 1.0 / 9.0  # box filter into channel 0
        blocks[1][0].weight[0, 0, 1, 1] = 1.0  # channel 0 passed through
        blocks[2][0].weight[0, 0, 1, 1] = 1.0
        for b in blocks:
            bn = b[1]
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # identity in eval mode
        sel.head.weight[0, 0], sel.head.bias[0] = k, -k * c
        sel.head.weight[1, 0], sel.head.bias[1] = -k, k * c
    return sel


def save_answer_model(path: Path, role: str, card: dict, answer: int, scale: float, width: int, **extra) -> None:
    kwargs = {"answer": answer, "scale": scale, "width": width}
    model = AnswerNet(card["num_classes"], card["in_chans"], **kwargs)
    _save(path, role, "test_answer", card, model, kwargs, **extra)


def build_split_run(run: Path) -> SplitRun:
    data = load_data("digits")
    card = data.card()
    sr = SplitRun(run, mean=card["mean"][0], std=card["std"][0])
    save_answer_model(run / "teacher" / "best.pt", "teacher", card, sr.answers[2], sr.scales[2], sr.widths[2])
    for i, name in enumerate(sr.names):
        save_answer_model(run / "students" / name / "best.pt", "student", card, sr.answers[i], sr.scales[i],
                          sr.widths[i], distillation={"kd_loss": "kl"})
    kwargs = {"width": sr.selector_width, "dropout": 0.0}
    sel_card = {**card, "num_classes": 2, "class_names": list(sr.names), "dataset_class_names": card["class_names"],
                "students": list(sr.names), "student_macs": [sr.macs(0), sr.macs(1)],
                "selector_macs": sr.selector_macs, "tie_margin": sr.M}
    _save(run / "selector" / "best.pt", "selector", "selector_cnn", sel_card,
          hand_set_selector(sr.selector_width, sr.K, sr.C), kwargs)
    # the fixture's own sanity: no test image sits within float32 noise of a decision boundary
    f = sr.feature(data.splits["test"].images.numpy())
    assert min(abs(f - b).min() for b in sr.boundaries()) > 1e-4
    return sr


@pytest.fixture(scope="session")
def split_run(tmp_path_factory) -> SplitRun:
    return build_split_run(tmp_path_factory.mktemp("split_run"))
