"""The router executing routing policies on torch models: input order kept, each answer equal to its
model run alone, one sub-batch per model reached, batch independence, the empty batch, refusals of a
policy that needs a model the run lacks; and the loaded split_run routing exactly as its plain
reference rule says, by the selector alone and with deferral steps to the teacher.

Expected routes come from a per-image reference written here (each image run alone through its
chain, the README's rule) or from split_run's reference, never from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from inference.router import Router, load_router
from moskd.errors import MoskdError
from moskd.policy import ALWAYS, Policy, Step

C = 5  # classes
MACS = [10.0, 20.0, 100.0]
NAMES = ["a", "b", "teacher"]

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(seed: int, width: int) -> nn.Module:
    """A tiny conv classifier with batch norm (eval mode: running stats, so batch-independent)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, C))
    with torch.no_grad():  # non-trivial running statistics, so a train-mode slip would show
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[-1].weight.mul_(8.0)  # spread the top probabilities, so thresholds split the batch
    return net.eval()


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    models = [small_net(1, 4), small_net(2, 8), small_net(3, 16)]
    selector = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()  # scores that vary from image to image
    x = torch.randn(12, 1, 8, 8)
    with torch.inference_mode():
        alone = [torch.stack([m(x[i:i + 1])[0] for i in range(len(x))]) for m in models]  # each image alone
        sel = torch.stack([selector(x[i:i + 1])[0] for i in range(len(x))]).sigmoid()
    return models, selector, x, alone, sel


class CallLog:
    """Records the batch size of every forward call of a module."""

    def __init__(self, module: nn.Module):
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(lambda m, inp, out: self.sizes.append(len(inp[0])))

    def close(self):
        self.handle.remove()


def fixed(chain: list[int], thresholds: list[float], combine: str = "replace") -> Policy:
    steps = [Step(a, b, "max_softmax", t) for a, b, t in zip(chain, chain[1:], thresholds)]
    return Policy("test", NAMES, MACS, {"rule": "fixed", "model": chain[0]}, steps, combine)


def reference(alone, first: list[int], steps: dict, combine: str = "replace"):
    """Per image, on its own: start at first[i], go on while the answer's top probability is below the
    step's threshold. Returns (answer probabilities, route, models bit mask, MACs)."""
    probs, route, mask, macs = [], [], [], []
    for i, k in enumerate(first):
        seen, m, cost = [], 0, 0.0
        while True:
            seen.append(torch.softmax(alone[k][i].double(), 0))
            m |= 1 << k
            cost += MACS[k]
            answer = sum(seen) / len(seen) if combine == "mean" else seen[-1]
            if k in steps and answer.max().item() < steps[k][1]:
                k = steps[k][0]
                continue
            break
        probs.append(answer)
        route.append(k)
        mask.append(m)
        macs.append(cost)
    return torch.stack(probs), route, mask, macs


def run_logged(router: Router, x: torch.Tensor):
    logs = [CallLog(m) for m in router.models]
    try:
        out = router(x)
    finally:
        for log in logs:
            log.close()
    return out, [log.sizes for log in logs]


def _tops(alone, k):
    return torch.softmax(alone[k].double(), 1).max(1).values


def _between(tops: torch.Tensor, q: float) -> float:
    """A threshold midway between two neighbouring top probabilities (never on one: float noise
    between a batch and a single image must not decide a route), about quantile q of them."""
    v = torch.cat([tops.new_zeros(1), tops.sort().values, tops.new_ones(1)])
    i = min(int(q * (len(v) - 1)), len(v) - 2)
    return float((v[i] + v[i + 1]) / 2)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), q0=st.floats(0, 1), q1=st.floats(0, 1), edge=st.sampled_from([None, 0.0, ALWAYS]),
       chain=st.sampled_from([[0, 2], [1, 2], [0, 1], [0, 1, 2]]))
def test_a_chain_keeps_order_and_each_answer_is_its_model_run_alone(parts, n, q0, q1, edge, chain):
    models, _, x, alone, _ = parts
    xs = x[:n]
    ths = [_between(_tops(alone, k)[:n], q) for k, q in zip(chain, (q0, q1))]
    if edge is not None:
        ths[0] = edge
    pol = fixed(chain, ths)
    out, sizes = run_logged(Router(pol, models, None, 2), xs)
    a = [m[:n] for m in alone]
    probs, route, mask, macs = reference(a, [chain[0]] * n, {s.source: (s.target, s.threshold) for s in pol.steps})
    assert out.routes.tolist() == route and out.models.tolist() == mask and out.macs.tolist() == macs
    assert out.logits.shape == (n, C)
    for i, k in enumerate(route):  # replace: the answer is the log-softmax of its model's own logits
        torch.testing.assert_close(out.logits[i], torch.log_softmax(a[k][i], 0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits.double().softmax(1), probs, rtol=0, atol=1e-5)
    # one sub-batch per model reached, holding exactly the images that reached it; the others idle
    assert sizes == [[n_k] if n_k else [] for n_k in (sum((m >> k) & 1 for m in mask) for k in range(3))]
    assert torch.equal(out.scores, torch.zeros(n, 2))  # no selector entry: no scores
    if edge == 0.0:
        assert route == [chain[0]] * n
    if edge == ALWAYS:
        assert all(r != chain[0] for r in route)


def test_the_committee_answers_with_mean_probabilities(parts):
    models, _, x, alone, _ = parts
    ths = [_between(_tops(alone, 0), 0.5), _between(_tops(alone, 1), 0.5)]
    out, sizes = run_logged(Router(fixed([0, 1, 2], ths, "mean"), models, None, 2), x)
    probs, route, mask, macs = reference(alone, [0] * len(x), {0: (1, ths[0]), 1: (2, ths[1])}, "mean")
    assert out.routes.tolist() == route and out.models.tolist() == mask and out.macs.tolist() == macs
    assert len(set(route)) >= 2  # some images really went on
    torch.testing.assert_close(out.logits.double().softmax(1), probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits.double().exp(), probs, rtol=0, atol=1e-6)  # log-probabilities
    for i in range(len(x)):  # by hand for the images that ran all three
        if mask[i] == 7:
            want = sum(torch.softmax(alone[k][i].double(), 0) for k in range(3)) / 3
            torch.testing.assert_close(out.logits[i].double().exp(), want, rtol=0, atol=1e-6)


def test_the_selector_entry_with_deferral_to_the_teacher(parts):
    models, selector, x, alone, sel = parts
    t = _between(torch.cat([_tops(alone, 0), _tops(alone, 1)]), 0.5)
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.0, "tie_margin": 0.0, "costs": [0.5, 1.0], "macs": 3.0}
    pol = Policy("hybrid", NAMES, MACS, entry, [Step(0, 2, "max_softmax", t), Step(1, 2, "max_softmax", t)])
    out, sizes = run_logged(Router(pol, models, selector, 2), x)
    first = sel.argmax(1).tolist()  # knob 0, no margin: the student most likely right
    probs, route, mask, macs = reference(alone, first, {0: (2, t), 1: (2, t)})
    assert out.routes.tolist() == route and out.models.tolist() == mask
    assert out.macs.tolist() == pytest.approx([3.0 + m for m in macs])  # the selector's MACs on every image
    assert len(set(first)) == 2 and 2 in route and {0, 1} & set(route)
    torch.testing.assert_close(out.scores, sel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits.double().exp(), probs, rtol=0, atol=1e-5)
    assert sizes == [[first.count(0)], [first.count(1)], [route.count(2)]]


def test_prediction_does_not_depend_on_the_batch(parts):
    models, selector, x, alone, _ = parts
    t = _between(_tops(alone, 0), 0.5)
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.1, "tie_margin": 0.02, "costs": [0.5, 1.0], "macs": 3.0}
    for pol in (fixed([0, 2], [t]), fixed([0, 1, 2], [t, 0.6], "mean"),
                Policy("hybrid", NAMES, MACS, entry, [Step(0, 2, "max_softmax", t)])):
        router = Router(pol, models, selector, 2)
        full = router(x)
        for i in range(len(x)):
            one = router(x[i:i + 1])
            assert one.routes.item() == full.routes[i].item() and one.models.item() == full.models[i].item()
            torch.testing.assert_close(one.logits[0], full.logits[i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(one.scores[0], full.scores[i], rtol=1e-5, atol=1e-5)


def test_empty_batch(parts):
    models, selector, x, _, _ = parts
    out, sizes = run_logged(Router(fixed([0, 2], [0.5]), models, None, 2, num_classes=C), x[:0])
    assert sizes == [[], [], []]  # nothing ran
    assert out.routes.shape == (0,) and out.macs.shape == (0,) and out.models.shape == (0,)
    assert out.logits.shape == (0, C)


def test_empty_batch_runs_nothing(parts):
    models, selector, x, _, _ = parts
    out, sizes = run_logged(Router(fixed([0, 2], [0.5]), models, None, 2), x[:0])
    assert sizes[1:] == [[], []] and sizes[0] in ([], [0])  # without a class count, at most an empty forward
    assert out.logits.shape == (0, C)
    assert out.routes.shape == (0,) and out.macs.shape == (0,) and out.models.shape == (0,) and len(out.logits) == 0


def test_a_policy_needing_a_model_the_run_lacks_is_refused(parts):
    models, selector, x, _, _ = parts
    with pytest.raises(MoskdError, match="teacher"):
        Router(fixed([0, 2], [0.5]), [models[0], models[1], None], None, 2)
    with pytest.raises(MoskdError, match="b"):
        Router(fixed([0, 1], [0.5]), [models[0], None, models[2]], None, 2)
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.0, "tie_margin": 0.0, "costs": [0.5, 1.0]}
    with pytest.raises(MoskdError, match="selector"):
        Router(Policy("router", NAMES, MACS, entry), models[:2] + [None], None, 2)
    # a model the policy never reaches may be missing: the teacher idles
    out = Router(fixed([0, 1], [ALWAYS]), [models[0], models[1], None], None, 2)(x)
    assert (out.routes == 1).all()
    with pytest.raises(ValueError):
        Router(fixed([0, 1], [0.5]), models[:2], None, 2)  # one module per policy model


# ---------------------------------------------------------------- a run whose selector splits the images


@pytest.fixture(scope="module")
def digits_test_images():
    from moskd.data import load_data

    return load_data("digits").splits["test"].images


def _routed(split_run, images, policy=None):
    from moskd.views import normalize

    run = load_router(split_run.path, device="cpu", policy=policy)
    x = normalize(images, torch.tensor(run.card["mean"]), torch.tensor(run.card["std"]))
    return run, x


def _top(scale: float) -> float:
    """Softmax top probability of a one-hot logit margin `scale` over 10 classes."""
    return math.exp(scale) / (math.exp(scale) + 9)


def _expected_logits(split_run, route, x):
    answers = torch.tensor(split_run.answers)[torch.from_numpy(route)]
    scales = torch.tensor(split_run.scales)[torch.from_numpy(route)]
    raw = torch.nn.functional.one_hot(answers, 10) * scales[:, None] + x.mean((1, 2, 3))[:, None]
    return torch.log_softmax(raw.double(), 1).float()  # Routed.logits: the answer's log-probabilities


def test_loaded_router_without_a_policy_routes_by_the_selector_alone(split_run, digits_test_images):
    assert not (split_run.path / "policy.json").exists()
    run, x = _routed(split_run, digits_test_images)
    assert run.teacher is None and run.router.policy.steps == []
    out, sizes = run_logged(run.router, x)
    images = digits_test_images.numpy()
    want = split_run.routes(images)
    assert out.routes.tolist() == want.tolist()
    share = np.bincount(want, minlength=3) / len(want)
    assert (share[:2] > 0.25).all() and share[2] == 0  # both students really used
    torch.testing.assert_close(out.scores, torch.tensor(split_run.scores(images), dtype=torch.float32),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits, _expected_logits(split_run, want, x), rtol=0, atol=1e-5)
    assert sizes[:2] == [[int(n)] for n in np.bincount(want, minlength=2)] and sizes[2] == []
    assert out.models.tolist() == (1 << want).tolist()
    assert out.macs.tolist() == pytest.approx([split_run.selector_macs + split_run.macs(k) for k in want])


def test_tie_margin_comes_from_the_selector_card(split_run, digits_test_images):
    run, x = _routed(split_run, digits_test_images)
    assert run.router.policy.entry["tie_margin"] == split_run.M
    images = digits_test_images.numpy()
    near_ties = split_run.routes(images) != split_run.routes(images, tie_margin=0.0)
    assert near_ties.sum() >= 10  # images that the margin (and only the margin) sends to the cheaper student
    assert (run.router(x).routes[torch.from_numpy(near_ties)] == 0).all()


def _hybrid(split_run, t_zero: float, t_one: float) -> Policy:
    m = [float(split_run.macs(i)) for i in range(3)]
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.0, "tie_margin": split_run.M,
             "costs": [m[0] / m[1], 1.0], "macs": float(split_run.selector_macs)}
    return Policy("hybrid", [*split_run.names, "teacher"], m, entry,
                  [Step(0, 2, "max_softmax", t_zero), Step(1, 2, "max_softmax", t_one)])


# zero's top probability is _top(6) = 0.978, one's _top(3) = 0.691 on every image (the logit shift cancels)
@pytest.mark.parametrize("t_zero, t_one, defer", [
    (0.97, 0.68, (False, False)), (0.99, 0.68, (True, False)), (0.97, 0.70, (False, True)),
    (ALWAYS, ALWAYS, (True, True)), (0.0, 0.0, (False, False))])
def test_loaded_router_with_teacher_steps_follows_the_reference(split_run, digits_test_images, t_zero, t_one, defer):
    assert (_top(6.0) > 0.97) and (_top(6.0) < 0.99) and (0.68 < _top(3.0) < 0.70)
    images = digits_test_images.numpy()
    run, x = _routed(split_run, digits_test_images, _hybrid(split_run, t_zero, t_one))
    assert run.teacher is not None or not any(defer)
    out, sizes = run_logged(run.router, x)
    first = split_run.routes(images)  # the selector's pick, by the reference rule
    want = np.where(np.array(defer)[np.minimum(first, 1)], 2, first)
    assert out.routes.tolist() == want.tolist()
    torch.testing.assert_close(out.logits, _expected_logits(split_run, want, x), rtol=0, atol=1e-5)
    went = want == 2
    assert out.models.tolist() == ((1 << first) | np.where(went, 4, 0)).tolist()
    assert out.macs.tolist() == pytest.approx(
        [split_run.selector_macs + split_run.macs(f) + (split_run.macs(2) if g else 0) for f, g in zip(first, went)])
    counts = np.bincount(first, minlength=2)
    assert sizes == [[int(counts[0])], [int(counts[1])], [int(went.sum())] if went.any() else []]


def test_loaded_router_refuses_a_policy_for_other_students(split_run):
    m = [float(split_run.macs(i)) for i in range(3)]
    pol = Policy("single", ["one", "zero", "teacher"], m, {"rule": "fixed", "model": 0})
    with pytest.raises(MoskdError, match="refit"):
        load_router(split_run.path, device="cpu", policy=pol)


# ---------------------------------------------------------------- power-of-two batches (streamed prediction)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _binary(n: int) -> list[int]:
    """n's binary decomposition, largest part first (written out here, not taken from the code under test)."""
    return [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


@pytest.mark.parametrize("n", [1, 7, 37, 45])
def test_pow2_batches_feed_each_model_its_binary_decomposition_and_change_no_answer(parts, n):
    models, selector, _, _, _ = parts
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.1, "tie_margin": 0.02, "costs": [0.5, 1.0], "macs": 3.0}
    pol = Policy("hybrid", NAMES, MACS, entry, [Step(0, 2, "max_softmax", 0.6), Step(1, 2, "max_softmax", 0.6)])
    whole, whole_sizes = run_logged(Router(pol, models, selector, 2), x)
    chunked_router = Router(pol, models, selector, 2, pow2_batches=True)
    sel_log = CallLog(selector)
    try:
        chunked, sizes = run_logged(chunked_router, x)
    finally:
        sel_log.close()
    assert sel_log.sizes == _binary(n)  # 37 -> 32, 4, 1
    for k, (got, one_batch) in enumerate(zip(sizes, whole_sizes)):
        assert got == _binary(sum(one_batch)), (k, got, one_batch)  # the same images, in power-of-two chunks
    assert n == 1 or any(len(got) > 1 for got in sizes)  # some sub-batch really was split
    assert chunked.routes.tolist() == whole.routes.tolist() and chunked.models.tolist() == whole.models.tolist()
    assert chunked.macs.tolist() == whole.macs.tolist()
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-6, atol=1e-6)


def test_power_of_two_slices_cover_the_batch_in_order():
    from moskd.batch_shapes import in_calls, power_of_two_slices

    for n in range(0, 300):
        slices = power_of_two_slices(n)
        lengths = [s.stop - s.start for s in slices]
        assert sum(lengths) == n and all(_is_power_of_two(m) for m in lengths)
        assert len(set(lengths)) == len(lengths) == bin(n).count("1")
        assert [i for s in slices for i in range(s.start, s.stop)] == list(range(n))
    x = np.arange(37 * 2).reshape(37, 2)
    seen = []
    got = in_calls(lambda a: seen.append(len(a)) or a * 10, pow2=True)(x)
    assert seen == [32, 4, 1] and np.array_equal(got, x * 10)


@pytest.mark.parametrize("pow2", [False, True])
def test_max_call_caps_every_call_and_changes_no_answer(parts, pow2):
    # a gathered window (moskd serve --gather): 45 images, no model call over 16 of them
    models, selector, _, _, _ = parts
    x = torch.randn(45, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    entry = {"rule": "selector", "students": [0, 1], "knob": 0.1, "tie_margin": 0.02, "costs": [0.5, 1.0], "macs": 3.0}
    pol = Policy("hybrid", NAMES, MACS, entry, [Step(0, 2, "max_softmax", 0.6), Step(1, 2, "max_softmax", 0.6)])
    whole, whole_sizes = run_logged(Router(pol, models, selector, 2), x)
    sel_log = CallLog(selector)
    try:
        capped, sizes = run_logged(Router(pol, models, selector, 2, pow2_batches=pow2, max_call=16), x)
    finally:
        sel_log.close()
    assert sel_log.sizes == ([16, 16, 8, 4, 1] if pow2 else [16, 16, 13])
    for got, one_batch in zip(sizes, whole_sizes):
        assert max(got, default=0) <= 16 and sum(got) == sum(one_batch)
    assert any(sum(s) > 16 for s in whole_sizes)  # some model really had more than one call's worth
    assert capped.routes.tolist() == whole.routes.tolist() and capped.macs.tolist() == whole.macs.tolist()
    torch.testing.assert_close(capped.logits, whole.logits, rtol=1e-6, atol=1e-6)


def test_call_slices_cap_then_split():
    from moskd.batch_shapes import call_slices

    for n in range(0, 80):
        for most in (None, 1, 5, 16):
            for pow2 in (False, True):
                slices = call_slices(n, pow2, most)
                lengths = [s.stop - s.start for s in slices]
                assert [i for s in slices for i in range(s.start, s.stop)] == list(range(n))
                assert all(m <= (most or n) for m in lengths)
                assert not pow2 or all(_is_power_of_two(m) for m in lengths)
                if not pow2:
                    assert len(slices) == (0 if n == 0 else -(-n // (most or n)))
