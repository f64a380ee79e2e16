"""The selector's training target, its calibration and the operating point it hands the router."""
from __future__ import annotations

import math

import pytest
import torch

from inference.router import load_router
from moskd.checkpoint import load_checkpoint
from selector.labels import make_labels
from selector.model import knob_grid, relative_costs, route_from_scores
from selector.train import choose_knob, fit_platt
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)


def test_labels_carry_each_students_probability_of_the_true_class():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                           [[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])  # (N=2, S=2, C=3)
    labels = make_labels(logits, torch.tensor([0, 1]), ["s", "d"], [1, 2])
    e2 = math.exp(2)
    expect = [[e2 / (e2 + 2), 1 / 3], [math.e / (math.e + 2), 1 / (2 + math.exp(3))]]
    assert labels["true_prob"].flatten().tolist() == pytest.approx(sum(expect, []))
    assert labels["correct"].tolist() == [[True, True], [True, False]]  # ties go to the first class


def test_platt_scaling_recovers_a_known_miscalibration():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 2, generator=g) * 2
    # the truth: P(right) = sigmoid(0.5 * z - 1) for student 0 and sigmoid(2 * z + 0.5) for student 1
    p = torch.sigmoid(torch.stack([0.5 * z[:, 0] - 1, 2 * z[:, 1] + 0.5], 1))
    correct = (torch.rand(z.shape, generator=g) < p).float()
    scale, bias = fit_platt(z, correct)
    assert scale.tolist() == pytest.approx([0.5, 2.0], abs=0.1)
    assert bias.tolist() == pytest.approx([-1.0, 0.5], abs=0.1)


def test_knob_grid_spans_all_dearest_to_all_cheapest():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.55]])
    costs = relative_costs([10, 40])
    grid = knob_grid(scores, costs)
    assert len(grid) >= 11 and grid == sorted(grid)
    assert route_from_scores(scores, 0.0, grid[0], costs).tolist() == [1, 1, 1]
    assert route_from_scores(scores, 0.0, grid[-1], costs).tolist() == [0, 0, 0]


def test_operating_knob_is_the_most_accurate_then_cheapest():
    # costs 0.25 (cheap) and 1 (dear): image 0's dear score is 0.6 higher, image 1's 0.3, image 2's 0.05
    scores = torch.tensor([[0.2, 0.8], [0.4, 0.7], [0.5, 0.55]])
    correct = torch.tensor([[0, 1], [0, 1], [1, 1]], dtype=torch.float)
    op = choose_knob(scores, correct, [25, 100], 0.0)
    route = route_from_scores(scores, 0.0, op["knob"], relative_costs([25, 100]))
    # best accuracy (1.0) needs images 0 and 1 on the dear student; the cheapest such point keeps 2 cheap
    assert route.tolist() == [1, 1, 0] and op["accuracy"] == 1.0
    assert op["student_macs"] == pytest.approx((100 + 100 + 25) / 3)


def test_trained_selector_is_calibrated_and_hands_its_knob_to_the_router(trained_run):  # noqa: F811
    ckpt = load_checkpoint(trained_run / "selector" / "best.pt", role="selector")
    card = ckpt["card"]
    assert isinstance(card["knob"], float) and card["calibrated"] is True
    assert len(card["heldout_index"]) > 0
    calib = (ckpt["model"]["calib_scale"], ckpt["model"]["calib_bias"])
    assert not (torch.equal(calib[0], torch.ones(2)) and torch.equal(calib[1], torch.zeros(2)))
    run = load_router(trained_run)
    assert run.router.knob == card["knob"]
    assert run.router.costs.tolist() == pytest.approx(relative_costs(card["student_macs"]).tolist())


@pytest.mark.parametrize("target", ["prob", "correct"])
def test_selector_target_reaches_the_loss(trained_run, monkeypatch, tmp_path, target):  # noqa: F811
    import shutil

    import selector.train as st

    seen = []
    real = st.bce_on_target

    def spy(logits, batch):
        seen.append(batch[2].detach().clone())
        return real(logits, batch)

    monkeypatch.setattr(st, "bce_on_target", spy)
    run = tmp_path / "run"
    shutil.copytree(trained_run / "students", run / "students")
    st.main(["--run-dir", str(run), "--limit", "60", "--epochs", "1", "--width", "4", "--device", "cpu",
             "--target", target])
    targets = torch.cat(seen)
    fractional = ((targets > 0) & (targets < 1)).any().item()
    assert fractional == (target == "prob")  # softmax probabilities vs 0/1 correctness
    labels = torch.load(run / "selector" / "labels.pt", weights_only=True)
    pool = labels["true_prob" if target == "prob" else "correct"].float()
    assert all(((pool - t).abs().sum(1) < 1e-6).any() for t in targets)  # every target is a labels row
