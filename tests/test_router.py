"""Router dispatch: order kept, each output equals its student run alone, one sub-batch per route,
escalation edge cases, and the tie rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from inference.router import Router
from moskd.errors import MoskdError
from selector.model import SelectorCNN, route_from_scores

C = 5  # classes


pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(seed: int, width: int) -> nn.Module:
    """A tiny conv classifier with batch norm (eval mode: running stats, so batch-independent)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, C))
    with torch.no_grad():  # non-trivial running statistics, so a train-mode slip would show
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    students = [small_net(1, 4), small_net(2, 8)]
    teacher = small_net(3, 16)
    selector = SelectorCNN(2, in_chans=1, width=4).eval()
    x = torch.randn(12, 1, 8, 8)
    return selector, students, teacher, x


class CallLog:
    """Records the batch size of every forward call of a module."""

    def __init__(self, module: nn.Module):
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(lambda m, inp, out: self.sizes.append(len(inp[0])))

    def close(self):
        self.handle.remove()


@settings(max_examples=25, deadline=None)
@given(routes=st.lists(st.integers(0, 2), min_size=1, max_size=12))
def test_dispatch_keeps_order_and_matches_each_model_alone(parts, routes):
    selector, students, teacher, x = parts
    router = Router(selector, students, teacher, escalate=0.5, names=["a", "b"])
    xs = x[: len(routes)]
    r = torch.tensor(routes)
    models = [*students, teacher]
    logs = [CallLog(m) for m in models]
    with torch.inference_mode():
        out = router.dispatch(xs, r)
    for log in logs:
        log.close()
    with torch.inference_mode():
        alone = [models[k](xs[i : i + 1])[0] for i, k in enumerate(routes)]
    assert out.shape == (len(routes), C)
    for i in range(len(routes)):
        torch.testing.assert_close(out[i], alone[i], rtol=1e-5, atol=1e-5)
    # one sub-batch per route actually used, holding exactly that route's images; unused models idle
    for k, log in enumerate(logs):
        n = routes.count(k)
        assert log.sizes == ([n] if n else [])


def test_prediction_does_not_depend_on_the_batch(parts):
    selector, students, teacher, x = parts
    router = Router(selector, students, names=["a", "b"])
    full = router(x)
    for i in range(len(x)):
        one = router(x[i : i + 1])
        assert one.routes.item() == full.routes[i].item()
        torch.testing.assert_close(one.logits[0], full.logits[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(one.scores[0], full.scores[i], rtol=1e-5, atol=1e-5)


def test_routes_follow_the_selector_scores(parts):
    selector, students, teacher, x = parts
    router = Router(selector, students, names=["a", "b"], tie_margin=0.0)
    out = router(x)
    with torch.inference_mode():
        expect = selector(x).sigmoid().argmax(1)
    assert torch.equal(out.routes, expect)


def test_tau_zero_equals_no_escalation_and_teacher_idle(parts):
    selector, students, teacher, x = parts
    plain = Router(selector, students, names=["a", "b"])(x)
    log = CallLog(teacher)
    zero = Router(selector, students, teacher, escalate=0.0, names=["a", "b"])(x)
    log.close()
    assert torch.equal(plain.routes, zero.routes)
    torch.testing.assert_close(plain.logits, zero.logits)
    assert log.sizes == []  # the teacher was never run


def test_tau_above_one_sends_every_image_to_the_teacher(parts):
    selector, students, teacher, x = parts
    logs = [CallLog(m) for m in students]
    out = Router(selector, students, teacher, escalate=1.01, names=["a", "b"])(x)
    for log in logs:
        log.close()
    assert (out.routes == 2).all()
    with torch.inference_mode():
        torch.testing.assert_close(out.logits, teacher(x), rtol=1e-5, atol=1e-5)
    assert all(log.sizes == [] for log in logs)  # no student ran


def test_escalation_threshold_is_strict_below(parts):
    selector, students, teacher, x = parts
    router = Router(selector, students, teacher, escalate=0.6, names=["a", "b"])
    scores = torch.tensor([[0.59, 0.2], [0.6, 0.1], [0.3, 0.9]])
    assert router.routes(scores).tolist() == [2, 0, 1]


def test_escalation_without_teacher_is_one_clear_error(parts):
    selector, students, _, _ = parts
    with pytest.raises(MoskdError, match="teacher"):
        Router(selector, students, None, escalate=0.5)


def test_ties_and_near_ties_go_to_the_cheaper_student():
    scores = torch.tensor([[0.90, 0.93], [0.90, 0.90], [0.50, 0.80]])
    assert route_from_scores(scores, 0.05).tolist() == [0, 0, 1]
    assert route_from_scores(scores, 0.0).tolist() == [1, 0, 1]
    three = torch.tensor([[0.70, 0.72, 0.74], [0.10, 0.80, 0.79]])
    assert route_from_scores(three, 0.03).tolist() == [1, 1]  # cheapest within 0.03 of the best


def test_empty_batch(parts):
    selector, students, _, x = parts
    out = Router(selector, students, names=["a", "b"])(x[:0])
    assert out.logits.shape == (0, C) and out.routes.shape == (0,)


# ---------------------------------------------------------------- a run whose selector splits the images


@pytest.fixture(scope="module")
def digits_test_images():
    from moskd.data import load_data

    return load_data("digits").splits["test"].images


def _routed(split_run, images, escalate=None):
    from inference.router import load_router
    from moskd.loader import normalize

    run = load_router(split_run.path, escalate, device="cpu")
    x = normalize(images, torch.tensor(run.card["mean"]), torch.tensor(run.card["std"]))
    return run, x


@pytest.mark.parametrize("escalate", [None, "TAU"])
def test_loaded_router_splits_images_as_the_reference_rule_says(split_run, digits_test_images, escalate):
    tau = split_run.TAU if escalate else None
    run, x = _routed(split_run, digits_test_images, tau)
    logs = [CallLog(m) for m in run.router._route_models()]
    out = run.router(x)
    for log in logs:
        log.close()
    want = split_run.routes(digits_test_images.numpy(), tau)
    assert out.routes.tolist() == want.tolist()
    share = np.bincount(want, minlength=3) / len(want)
    assert (share[:2] > 0.25).all() and (share[2] > 0.25 if tau else share[2] == 0)  # all routes really used
    torch.testing.assert_close(out.scores, torch.tensor(split_run.scores(digits_test_images.numpy()), dtype=torch.float32),
                               rtol=0, atol=1e-5)
    # each image answered by its route's model: that model's class, margin and the image's own shift
    answers = torch.tensor(split_run.answers)[torch.from_numpy(want)]
    scales = torch.tensor(split_run.scales)[torch.from_numpy(want)]
    expect = torch.nn.functional.one_hot(answers, 10) * scales[:, None] + x.mean((1, 2, 3))[:, None]
    torch.testing.assert_close(out.logits, expect, rtol=0, atol=1e-5)
    # one sub-batch per route, of exactly its images; the teacher idle unless escalating
    assert [log.sizes for log in logs] == [[int(n)] if n else [] for n in np.bincount(want, minlength=3)][:len(logs)]


def test_tie_margin_comes_from_the_selector_card(split_run, digits_test_images):
    run, x = _routed(split_run, digits_test_images)
    assert run.router.tie_margin == split_run.M
    near_ties = split_run.routes(digits_test_images.numpy()) != split_run.routes(digits_test_images.numpy(), tie_margin=0.0)
    assert near_ties.sum() >= 10  # images that the margin (and only the margin) sends to the cheaper student
    assert (run.router(x).routes[torch.from_numpy(near_ties)] == 0).all()


def test_escalation_share_grows_with_tau_as_the_reference_says(split_run, digits_test_images):
    images = digits_test_images.numpy()
    for tau in (0.0, 0.6, split_run.TAU, 0.9, 1.01):
        run, x = _routed(split_run, digits_test_images, tau)
        got = (run.router(x).routes == 2).float().mean().item()
        assert got == pytest.approx((split_run.routes(images, tau) == 2).mean())
    assert (split_run.routes(images, 0.9) == 2).mean() > (split_run.routes(images, 0.6) == 2).mean() > 0
