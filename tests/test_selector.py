"""Selector stage: labels logic, MAC budget, trainSelector on a tiny run, and that it learns.

Also home of `tiny_run`, the small run directory (teacher, two students, a baseline, a trained
selector) that tests/test_inference.py evaluates. Its models are tiny registered CNNs with
untrained weights: the tests check mechanics and bookkeeping, not accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from moskd.checkpoint import load_checkpoint, save_checkpoint
from moskd.data import load_data
from moskd.models import build_model_from_checkpoint, create_model, register_model
from moskd.profile import count_macs
from selector.labels import label_stats, make_labels, preferred_routes
from moskd.policy import entry_routes
from selector.train import MAC_BUDGET
from selector.cli import main as train_selector
from selector.train import holdout_split
from tests.conftest import TinyCNN

LIMIT = 60  # images per split in the tiny run


pytestmark = pytest.mark.usefixtures("one_thread")
SPLIT = {"dataset": "digits", "split_seed": 0, "select_fraction": 0.2, "test_fraction": 0.2, "image_size": 32}


# ---------------------------------------------------------------- tiny models and runs


class ConstantNet(nn.Module):
    """Always predicts class `answer`; its conv only gives it a realistic MAC count."""

    def __init__(self, num_classes: int, in_chans: int = 1, answer: int = 0, width: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
        self.register_buffer("onehot", 10.0 * nn.functional.one_hot(torch.tensor(answer), num_classes).float())

    def forward(self, x):
        return self.onehot.expand(len(x), -1) + 0.0 * self.conv(x).mean()


@register_model("test_constant")
def constant_factory(num_classes: int, in_chans: int = 1, answer: int = 0, width: int = 32) -> nn.Module:
    return ConstantNet(num_classes, in_chans, answer, width)


def save_model(run: Path, folder: str, role: str, arch: str, data, seed: int, kwargs: dict, kd_loss="kl",
               train_limit: int | None = None):
    torch.manual_seed(seed)
    model = create_model(arch, data.num_classes, data.in_chans, **kwargs)
    card = {"role": role, "arch": arch, **data.card(), "model_kwargs": kwargs}
    if role == "student":
        card["distillation"] = {"kd_loss": kd_loss}
    path = run / (folder if role == "teacher" else f"students/{folder}") / "best.pt"
    config = dict(SPLIT, limit=LIMIT, train_limit=train_limit)
    save_checkpoint({"model": model.state_dict(), "ema": None, "card": card, "config": config}, path)


def make_students(run: Path, limit: int = LIMIT, *, baseline: bool = True):
    data = load_data("digits", limit=limit)
    save_model(run, "teacher", "teacher", "test_tiny_cnn", data, 0, {"width": 64, "depth": 3})
    # folder names sort opposite to cost, so route order must come from MACs, not names
    save_model(run, "a_dear", "student", "test_tiny_cnn", data, 1, {"width": 48, "depth": 3})
    save_model(run, "b_cheap", "student", "test_tiny_cnn", data, 2, {"width": 32, "depth": 3})
    if baseline:
        save_model(run, "b_cheap-baseline", "student", "test_tiny_cnn", data, 3, {"width": 32, "depth": 3},
                   kd_loss=None)
    return data


_RUNS: dict[str, Path] = {}


def tiny_run(tmp_path_factory) -> Path:
    """A run with teacher, students, baseline and a selector trained by trainSelector (built once)."""
    if "run" not in _RUNS:
        run = tmp_path_factory.mktemp("tiny_run")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # built before the per-test one_thread fixture applies
        try:
            make_students(run)
            train_selector(["--run-dir", str(run), "--limit", str(LIMIT), "--epochs", "2", "--width", "8",
                            "--device", "cpu"])
        finally:
            torch.set_num_threads(threads)
        _RUNS["run"] = run
    return _RUNS["run"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


# ---------------------------------------------------------------- labels logic


def test_preferred_route_is_the_cheapest_correct_student_or_none():
    correct = torch.tensor([[True, True], [False, True], [True, False], [False, False]])
    assert preferred_routes(correct).tolist() == [0, 1, 0, -1]
    three = torch.tensor([[False, True, True], [False, False, True]])
    assert preferred_routes(three).tolist() == [1, 2]


def test_labels_from_logits_count_exactly_one_right():
    targets = torch.tensor([0, 1, 2, 3, 4])
    preds = torch.tensor([[0, 0], [1, 9], [9, 2], [9, 9], [4, 4]])  # both, cheap only, dear only, none, both
    logits = torch.nn.functional.one_hot(preds, 10).float()
    labels = make_labels(logits, targets, ["cheap", "dear"], [10, 20])
    assert labels["correct"].tolist() == [[True, True], [True, False], [False, True], [False, False], [True, True]]
    assert labels["route"].tolist() == [0, 0, 1, -1, 0]
    s = labels["stats"]
    assert (s["all_right"], s["none_right"], s["exactly_one_right"]) == (2, 1, 2)
    assert s["only_right"] == {"cheap": 1, "dear": 1}
    assert s["accuracy"] == pytest.approx({"cheap": 0.6, "dear": 0.6}) and s["oracle"] == pytest.approx(0.8)


def test_label_stats_with_no_images():
    s = label_stats(torch.zeros(0, 2, dtype=torch.bool), ["a", "b"])
    assert s["num_images"] == 0 and s["exactly_one_right"] == 0


def test_holdout_split_is_deterministic_disjoint_and_complete():
    a, b = holdout_split(50, 0.3, seed=4)
    a2, b2 = holdout_split(50, 0.3, seed=4)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert len(b) == 15 and sorted(torch.cat([a, b]).tolist()) == list(range(50))
    assert not torch.equal(holdout_split(50, 0.3, seed=5)[1], b)


# ---------------------------------------------------------------- the selector model


@pytest.mark.parametrize("size", [[1, 8, 8], [3, 32, 32]], ids=["digits", "cifar"])
def test_selector_costs_at_most_five_percent_of_the_cheapest_student(size):
    selector = create_model("selector_cnn", num_classes=2, in_chans=size[0])
    cheapest = min(count_macs(create_model(a, 10, size[0]), size) for a in ("googlenet", "densenet121"))
    assert count_macs(selector, size) <= MAC_BUDGET * cheapest


@pytest.mark.parametrize("students", [2, 3, 5])
def test_selector_gives_one_score_per_student(students):
    torch.manual_seed(0)
    model = create_model("selector_cnn", num_classes=students, in_chans=3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, students)
        model.head.bias[students - 1] += 2.0  # student k's score moves with head row k only
        moved = model(x)
    assert torch.allclose(moved[:, :-1], out[:, :-1]) and torch.allclose(moved[:, -1], out[:, -1] + 2.0)


def test_selector_rebuilds_from_its_checkpoint(trained_run):
    """The rebuilt best.pt, routed by the rule written out by hand, scores what summary.json says."""
    from moskd.views import normalize

    ckpt = load_checkpoint(trained_run / "selector" / "best.pt", role="selector")
    model = build_model_from_checkpoint(ckpt)
    card = ckpt["card"]
    labels = torch.load(trained_run / "selector" / "labels.pt", weights_only=True)
    _, held = holdout_split(len(labels["correct"]), 0.3, seed=0)
    images = load_data("digits", limit=LIMIT).splits["select"].images[held]
    with torch.no_grad():
        scores = model(normalize(images, torch.tensor(card["mean"]), torch.tensor(card["std"]))).sigmoid().tolist()
    right = 0
    for s, ok in zip(scores, labels["correct"][held].tolist()):
        route = min(i for i, v in enumerate(s) if v >= max(s) - card["tie_margin"])
        right += ok[route]
    summary = json.loads((trained_run / "selector" / "summary.json").read_text())
    assert summary["heldout_routed_acc"] == pytest.approx(right / len(held))


# ---------------------------------------------------------------- trainSelector


def test_train_selector_writes_its_folder(trained_run):
    out = trained_run / "selector"
    for name in ("labels.pt", "best.pt", "last.pt", "metrics.jsonl", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    card = load_checkpoint(out / "best.pt")["card"]
    assert card["role"] == "selector" and card["arch"] == "selector_cnn"
    assert card["students"] == ["b_cheap", "a_dear"]  # cheapest first, baseline excluded
    assert card["num_classes"] == 2 and card["student_macs"][0] < card["student_macs"][1]
    labels = torch.load(out / "labels.pt", weights_only=True)
    assert labels["students"] == ["b_cheap", "a_dear"]
    n = load_data("digits", limit=LIMIT).splits["select"].targets.numel()
    assert labels["correct"].shape == (n, 2) and labels["logits"].shape == (n, 2, 10)
    # the cheapest right student per image (columns are cheapest first), -1 where none is right
    want = [next((i for i, ok in enumerate(row) if ok), -1) for row in labels["correct"].tolist()]
    assert labels["route"].tolist() == want and -1 in want and 0 in want
    preds = labels["logits"].argmax(2)
    assert labels["correct"].tolist() == [[int(p) == int(t) for p in row] for row, t in zip(preds, labels["targets"])]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "select_routed_acc" in json.loads(lines[-1])


def test_train_selector_labels_use_select_not_test(trained_run):
    labels = torch.load(trained_run / "selector" / "labels.pt", weights_only=True)
    data = load_data("digits", limit=LIMIT)
    assert torch.equal(labels["targets"], data.splits["select"].targets)


def test_train_selector_refuses_to_overwrite_a_run(trained_run, cli):
    labels = trained_run / "selector" / "labels.pt"
    before = labels.stat().st_mtime_ns
    code, _, err = cli(train_selector, ["--run-dir", str(trained_run), "--limit", str(LIMIT), "--width", "8",
                                        "--device", "cpu"])
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert labels.stat().st_mtime_ns == before


def test_missing_students_name_the_command_to_run(tmp_path, cli):
    code, _, err = cli(train_selector, ["--run-dir", str(tmp_path / "typo"), "--device", "cpu"])
    assert code == 2 and "no such run directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(train_selector, ["--run-dir", str(tmp_path), "--device", "cpu"])  # empty: stopped before all
    assert code == 2 and f"teacherTrain --run-dir {tmp_path}" in err and len(err.strip().splitlines()) == 1
    save_model(tmp_path, "teacher", "teacher", "test_tiny_cnn", load_data("digits", limit=LIMIT), 0, {"width": 8})
    code, _, err = cli(train_selector, ["--run-dir", str(tmp_path), "--device", "cpu"])  # a teacher, no students
    assert code == 2 and f"StudentTrain --run-dir {tmp_path} --model 1" in err and len(err.strip().splitlines()) == 1
    make_students(tmp_path, baseline=False)
    code, _, err = cli(train_selector, ["--run-dir", str(tmp_path), "--students", "b_cheap", "googlenet",
                                        "--device", "cpu"])
    assert code == 2 and "students/googlenet/best.pt" in err and "StudentTrain --model googlenet" in err


def test_selector_over_budget_is_refused(tmp_path, cli):
    make_students(tmp_path, baseline=False)
    code, _, err = cli(train_selector, ["--run-dir", str(tmp_path), "--limit", str(LIMIT), "--width", "64",
                                        "--device", "cpu"])
    assert code == 2 and "--width" in err and not (tmp_path / "selector" / "labels.pt").exists()


def test_selector_learns_which_student_is_right(tmp_path):
    """Student `zero` only ever answers 0, `one` only 1: on digits 0 and 1 exactly one is right, and
    only the image tells which. A selector that learns must route far better than either student."""
    data = load_data("digits", limit=None)
    save_model(tmp_path, "zero", "student", "test_constant", data, 0, {"answer": 0, "width": 1600})
    save_model(tmp_path, "one", "student", "test_constant", data, 0, {"answer": 1, "width": 2000})
    train_selector(["--run-dir", str(tmp_path), "--epochs", "25", "--width", "8", "--lr", "0.01",
                    "--device", "cpu"])
    s = json.loads((tmp_path / "selector" / "summary.json").read_text())
    assert s["labels"]["exactly_one_right"] == s["labels"]["only_right"]["zero"] + s["labels"]["only_right"]["one"]
    best_single = max(s["heldout_always_zero"], s["heldout_always_one"])
    # routing can at most reach the oracle (images of 0s and 1s); demand most of the gap closed
    assert s["heldout_routed_acc"] >= best_single + 0.7 * (s["heldout_oracle"] - best_single)


def test_route_rule_is_shared_with_training_metric():
    from selector.train import routed_score

    logits = torch.tensor([[2.0, 2.05], [-3.0, 3.0]])
    correct = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    total, n = routed_score(0.05)(logits, (None, None, correct, correct))  # (x, y, target, correct)
    assert n == 2 and total == pytest.approx(2.0, abs=1e-4)  # near tie -> cheaper (right), clear win -> dear
    # same routes, same accuracy, better calibrated: scores higher (the checkpoint tie-break)
    sharper, _ = routed_score(0.05)(torch.tensor([[6.0, -6.0], [-6.0, 6.0]]), (None, None, correct, correct))
    assert total < sharper <= 2.0
    assert entry_routes(logits.sigmoid().numpy(), 0.05).tolist() == [0, 1]


def test_student_with_other_normalisation_is_adapted_not_refused():
    from moskd.views import normalize
    from moskd.models import adapt_input

    torch.manual_seed(0)
    model = TinyCNN(10, 1, width=8).eval()
    own = {"input_size": [1, 8, 8], "mean": [0.3], "std": [0.2]}
    shared = {"input_size": [1, 8, 8], "mean": [0.25], "std": [0.3]}
    raw = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    adapted = adapt_input(model, own, shared, "student")
    with torch.no_grad():
        got = adapted(normalize(raw, torch.tensor(shared["mean"]), torch.tensor(shared["std"])))
        want = model(normalize(raw, torch.tensor(own["mean"]), torch.tensor(own["std"])))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert adapt_input(model, own, own, "student") is model
    with pytest.raises(Exception, match="inputs"):
        adapt_input(model, own, {**shared, "input_size": [3, 8, 8]}, "student")


def test_selector_flags_reach_the_card_the_metric_and_the_holdout(tmp_path, monkeypatch, cli):
    import selector.train

    make_students(tmp_path, baseline=False)
    margins, real = [], selector.train.routed_score
    monkeypatch.setattr(selector.train, "routed_score", lambda m: margins.append(m) or real(m))
    code, _, err = cli(train_selector, ["--run-dir", str(tmp_path), "--limit", str(LIMIT), "--epochs", "1",
                                        "--width", "8", "--tie-margin", "0.2", "--holdout-fraction", "0.5",
                                        "--device", "cpu"])
    assert code == 0, err
    assert margins == [0.2]
    assert load_checkpoint(tmp_path / "selector" / "best.pt")["card"]["tie_margin"] == 0.2
    summary = json.loads((tmp_path / "selector" / "summary.json").read_text())
    assert summary["heldout_images"] == LIMIT // 2


def test_spare_split_is_the_training_pool_beyond_train_limit():
    whole, cut = load_data("digits"), load_data("digits", train_limit=100)
    assert "spare" not in whole.splits and len(cut.splits["train"]) == 100
    train, spare, select = (set(cut.splits[k].index.tolist()) for k in ("train", "spare", "select"))
    assert not train & spare and not spare & select and not train & select
    assert train | spare == set(whole.splits["train"].index.tolist())  # together: the whole training pool


def test_selector_trains_on_spare_images_only_when_no_student_saw_them(tmp_path, cli):
    data = load_data("digits", train_limit=100)

    def students(train_limit):
        for folder, seed, width in (("a_dear", 1, 48), ("b_cheap", 2, 32)):
            save_model(tmp_path, folder, "student", "test_tiny_cnn", data, seed, {"width": width, "depth": 3},
                       train_limit=train_limit)

    common = ["--run-dir", str(tmp_path), "--limit", str(LIMIT), "--epochs", "1", "--width", "8", "--device", "cpu"]
    students(None)  # trained on the whole pool: every spare image is one they saw
    code, _, err = cli(train_selector, common + ["--labels-from", "select+spare", "--train-limit", "100"])
    assert code == 2 and "whole training pool" in err and len(err.strip().splitlines()) == 1
    students(100)
    code, _, err = cli(train_selector, common + ["--labels-from", "select+spare"])  # no --train-limit: no spare
    assert code == 2 and "no spare images" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(train_selector, common + ["--labels-from", "select+spare", "--train-limit", "50"])
    assert code == 2 and "--train-limit 100" in err and len(err.strip().splitlines()) == 1  # spare would overlap
    assert not (tmp_path / "selector").exists()
    code, _, err = cli(train_selector, common + ["--labels-from", "select+spare", "--train-limit", "100"])
    assert code == 0, err
    s = json.loads((tmp_path / "selector" / "summary.json").read_text())
    held = s["heldout_images"]
    assert s["spare_labels"]["num_images"] == LIMIT  # --limit slices spare like every split
    assert s["train_images"] == (LIMIT - held) + LIMIT  # select's training part plus every spare image
    assert s["labels"]["num_images"] == LIMIT  # held-out choices still come from `select` alone
    # resuming with another training set would replay a schedule laid out for the old one's size
    code, _, err = cli(train_selector, common + ["--labels-from", "select", "--train-limit", "100", "--resume",
                                                 "--epochs", "2"])
    assert code == 2 and "--labels-from select+spare" in err and len(err.strip().splitlines()) == 1
