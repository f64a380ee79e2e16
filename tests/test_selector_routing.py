"""The selector's training target, its calibration and the operating point it hands the router."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from inference.router import load_router
from moskd.checkpoint import load_checkpoint
from moskd.policy import entry_routes, knob_grid, relative_costs
from selector.labels import make_labels
from selector.train import choose_knob, fit_platt, routes
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
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.55]])
    costs = relative_costs([10, 40])
    assert costs.tolist() == [0.25, 1.0]
    grid = knob_grid(scores, costs)
    assert len(grid) >= 11 and grid == sorted(grid)
    assert entry_routes(scores, 0.0, grid[0], costs).tolist() == [1, 1, 1]
    assert entry_routes(scores, 0.0, grid[-1], costs).tolist() == [0, 0, 0]


def test_selector_train_routes_on_torch_scores_are_the_policy_entry_rule():
    scores = torch.tensor([[0.90, 0.93], [0.90, 0.90], [0.50, 0.80]])
    assert routes(scores, 0.05).tolist() == [0, 0, 1] and routes(scores, 0.0).tolist() == [1, 0, 1]
    assert routes(scores, 0.05).dtype == torch.int64
    # knob 0.2 on costs .25 and 1: charged .85/.73, .85/.70, .45/.60
    assert routes(scores, 0.0, 0.2, [25, 100]).tolist() == [0, 0, 1]


def test_operating_knob_is_the_most_accurate_then_cheapest():
    # costs 0.25 (cheap) and 1 (dear): image 0's dear score is 0.6 higher, image 1's 0.3, image 2's 0.05
    scores = torch.tensor([[0.2, 0.8], [0.4, 0.7], [0.5, 0.55]])
    correct = torch.tensor([[0, 1], [0, 1], [1, 1]], dtype=torch.float)
    op = choose_knob(scores, correct, [25, 100], 0.0)
    route = entry_routes(scores.numpy(), 0.0, op["knob"], relative_costs([25, 100]))
    # best accuracy (1.0) needs images 0 and 1 on the dear student; the cheapest such point keeps 2 cheap
    assert route.tolist() == [1, 1, 0] and op["accuracy"] == 1.0
    assert op["student_macs"] == pytest.approx((100 + 100 + 25) / 3)
    # the curve spans the sweep: all-dear (accuracy 1, 100 MACs) at its first knob, all-cheap at its last
    assert op["curve"][0]["student_macs"] == pytest.approx(100) and op["curve"][0]["accuracy"] == 1.0
    assert op["curve"][-1]["student_macs"] == pytest.approx(25) and op["curve"][-1]["accuracy"] == pytest.approx(1 / 3)


def test_trained_selector_is_calibrated_and_hands_its_knob_to_the_router(trained_run, tmp_path):  # noqa: F811
    ckpt = load_checkpoint(trained_run / "selector" / "best.pt", role="selector")
    card = ckpt["card"]
    assert isinstance(card["knob"], float) and card["calibrated"] is True
    assert len(card["heldout_index"]) > 0
    calib = (ckpt["model"]["calib_scale"], ckpt["model"]["calib_bias"])
    assert not (torch.equal(calib[0], torch.ones(2)) and torch.equal(calib[1], torch.zeros(2)))
    # a copy without any fitted RUN/policy.json (other tests may fit one): the selector alone routes
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("policy.json", "report*", "eval"))
    run = load_router(run_dir)
    entry = run.router.policy.entry
    assert entry["rule"] == "selector" and entry["knob"] == card["knob"] and run.router.policy.steps == []
    assert entry["tie_margin"] == card["tie_margin"] and entry["macs"] == card["selector_macs"]
    assert entry["costs"] == pytest.approx(relative_costs(card["student_macs"]).tolist())
    m = card["student_macs"]
    assert entry["costs"] == pytest.approx([m[0] / max(m), m[1] / max(m)])  # by hand
    assert run.router.policy.models[:2] == card["students"]


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
    from selector.cli import main as train_selector

    train_selector(["--run-dir", str(run), "--limit", "60", "--epochs", "1", "--width", "4", "--device", "cpu",
             "--target", target])
    targets = torch.cat(seen)
    fractional = ((targets > 0) & (targets < 1)).any().item()
    assert fractional == (target == "prob")  # softmax probabilities vs 0/1 correctness
    labels = torch.load(run / "selector" / "labels.pt", weights_only=True)
    pool = labels["true_prob" if target == "prob" else "correct"].float()
    assert all(((pool - t).abs().sum(1) < 1e-6).any() for t in targets)  # every target is a labels row
