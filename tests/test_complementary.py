"""Complementary students (--complementary clusters): the partition, the per-image weights, the
selector's owner target, a synthetic two-cluster set on which specialists must beat independent
students under the router, and the one-student commands with and without the mode."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from moskd.checkpoint import load_checkpoint
from moskd.precision import choose_precision
from selector.labels import owner_targets
from moskd.policy import entry_routes
from selector.cli import main as selector_main
from moskd.run import RunDir
from students.complementary import build_partition, class_confusion, cluster_classes, image_weights
from students.losses import cached_objective
from students.cli import main as student_main
from teacher.cli import main as teacher_main

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the partition and the weights, by hand


def test_class_confusion_averages_teacher_probabilities_per_true_class():
    probs = torch.tensor([[0.6, 0.4, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.5, 0.5]])
    targets = torch.tensor([0, 0, 1, 2])
    m = class_confusion(probs, targets, 3)
    np.testing.assert_allclose(m, [[0.7, 0.3, 0.0], [0.1, 0.9, 0.0], [0.0, 0.5, 0.5]])


def test_confusable_classes_cluster_together_hardest_cluster_first():
    # classes {0, 2, 4} confuse each other and the teacher is unsure there; {1, 3, 5} are easy
    m = np.full((6, 6), 0.001)
    for block, diag, off in (([0, 2, 4], 0.7, 0.15), ([1, 3, 5], 0.95, 0.02)):
        for i in block:
            for j in block:
                m[i, j] = diag if i == j else off
    assert cluster_classes(m, 2) == [0, 1, 0, 1, 0, 1]
    m2 = m[[1, 0, 3, 2, 5, 4]][:, [1, 0, 3, 2, 5, 4]]  # swap the roles: the easy block comes first now
    assert cluster_classes(m2, 2) == [1, 0, 1, 0, 1, 0]


def test_partition_names_each_owner_and_its_classes():
    logits = torch.tensor([[4.0, 3.0, -5.0], [3.0, 4.0, -5.0], [-5.0, -5.0, 5.0], [-5.0, -4.0, 5.0]])
    part = build_partition(logits, torch.tensor([0, 1, 2, 2]), 3, ["dear", "cheap"], temperature=1.0,
                           teacher_sha256="x", class_names=["a", "b", "c"])
    assert part["class_owner"] == ["dear", "dear", "cheap"]  # the confused pair is the hard cluster
    assert part["clusters"] == {"dear": ["a", "b"], "cheap": ["c"]}


def test_image_weights_own_classes_one_others_the_other_weight():
    w = image_weights(torch.tensor([0, 2, 1, 2]), ["s1", "s2", "s1"], "s1", 0.25)
    assert w.tolist() == [1.0, 1.0, 0.25, 1.0]  # classes 0 and 2 are s1's
    assert image_weights(torch.tensor([0, 2, 1]), ["s1", "s2", "s1"], "s2", 0.1).tolist() == pytest.approx([0.1, 0.1, 1.0])


def test_owner_targets_are_one_hot_in_routing_order():
    t = owner_targets(torch.tensor([0, 1, 2]), ["dear", "cheap", "dear"], ["cheap", "dear"])
    assert t.tolist() == [[0, 1], [1, 0], [0, 1]]


# ---------------------------------------------------------------- two clusters: specialists must win


def two_clusters(n: int, seed: int):
    """4 classes in 2 clusters. x0 tells the cluster apart (easy); inside cluster A only x1 tells the
    classes apart and x2 is loud noise, inside cluster B the other way round."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    cluster = (y >= 2).float()
    sign = (y % 2).float() * 2 - 1
    noise = lambda s: torch.randn(n, generator=g) * s  # noqa: E731
    x0 = (cluster * 2 - 1) * 3 + noise(0.3)
    x1 = torch.where(cluster == 0, sign + noise(0.2), noise(1.5))
    x2 = torch.where(cluster == 1, sign + noise(0.2), noise(1.5))
    return torch.stack([x0, x1, x2], 1), y


def bottleneck(seed: int) -> nn.Module:
    """A student that can look along one direction only: capacity for one cluster's distinction."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 1), nn.Linear(1, 4))


def teacher_logits(y: torch.Tensor) -> torch.Tensor:
    """A right teacher that confuses siblings of a cluster, more in cluster A (classes 0, 1)."""
    t = torch.full((len(y), 4), -4.0)
    t[torch.arange(len(y)), y] = 4.0
    sibling = y ^ 1
    t[torch.arange(len(y)), sibling] = torch.where(y < 2, torch.tensor(2.5), torch.tensor(1.5))
    return t


def train(model: nn.Module, x, y, t, weights=None, steps: int = 400) -> nn.Module:
    objective = cached_objective(alpha=0.5, temperature=2.0, kd_loss="kl", weighted=weights is not None)
    batch = (x, y, weights, t) if weights is not None else (x, y, t)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = objective(model, batch, choose_precision("cpu")).parts["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def train_selector(x, target: torch.Tensor) -> nn.Module:
    sel = nn.Linear(3, target.shape[1])
    opt = torch.optim.Adam(sel.parameters(), lr=0.05)
    for _ in range(300):
        loss = nn.functional.binary_cross_entropy_with_logits(sel(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sel


@torch.no_grad()
def routed_accuracy(students, selector, x, y) -> float:
    route = torch.from_numpy(entry_routes(selector(x).sigmoid().numpy()))
    answers = torch.stack([s(x).argmax(1) for s in students], 1).gather(1, route[:, None])[:, 0]
    return (answers == y).float().mean().item()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def test_specialists_beat_independent_students_under_the_router():
    x, y = two_clusters(2000, seed=0)
    xs, ys = two_clusters(2000, seed=1)  # where the selector learns (`select`)
    xt, yt = two_clusters(4000, seed=2)  # where it is scored (`test`)
    t = teacher_logits(y)
    part = build_partition(t, y, 4, ["A", "B"], temperature=2.0, teacher_sha256="-", class_names=list("0123"))
    assert part["class_owner"] == ["A", "A", "B", "B"]

    independent = [train(bottleneck(seed), x, y, t) for seed in (0, 1)]
    with torch.no_grad():  # the `none` selector learns each student's probability of the true class
        true_prob = torch.stack([s(xs).softmax(1)[torch.arange(len(ys)), ys] for s in independent], 1)
    routed_none = routed_accuracy(independent, train_selector(xs, true_prob), xt, yt)

    specialists = [train(bottleneck(0), x, y, t, image_weights(y, part["class_owner"], name, 0.25))
                   for name in ("A", "B")]
    selector = train_selector(xs, owner_targets(ys, part["class_owner"], ["A", "B"]))
    routed_spec = routed_accuracy(specialists, selector, xt, yt)

    best_single = max(accuracy(s, xt, yt) for s in independent + specialists)
    assert min(accuracy(s, xt, yt) for s in specialists) > 0.6  # each still a usable classifier
    assert routed_spec > routed_none + 0.1, (routed_spec, routed_none)
    assert routed_spec > best_single + 0.1, (routed_spec, best_single)


# ---------------------------------------------------------------- the commands, with and without the mode

SLICE = ["--dataset", "digits", "--limit", "60", "--batch-size", "30", "--eval-batch-size", "60", "--device", "cpu",
         "--epochs", "1"]
OWNERS = ["--owners", "test_tiny_cnn", "test_small_cnn"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("comp")
    teacher_main(["--run-dir", str(run), "--arch", "test_tiny_cnn", *SLICE])
    return run


def test_one_student_at_a_time_shares_one_partition_and_the_selector_learns_the_owner(teacher_run, cli):
    run = str(teacher_run)
    code, out, err = cli(student_main, ["--run-dir", run, "--model", "test_small_cnn", "--complementary",
                                        "clusters", *OWNERS, "--teacher-cache", "2", *SLICE])
    assert code == 0, err
    part = json.loads(RunDir(run).teacher.partition("clusters").read_text())
    assert sorted(set(part["class_owner"])) == ["test_small_cnn", "test_tiny_cnn"] and "partition of the classes" in out
    code, out, err = cli(student_main, ["--run-dir", run, "--model", "test_tiny_cnn", "--complementary",
                                        "clusters", *OWNERS, "--teacher-cache", "2", *SLICE])
    assert code == 0, err
    assert "partition reused" in out
    for name in ("test_tiny_cnn", "test_small_cnn"):
        comp = load_checkpoint(teacher_run / f"students/{name}/best.pt")["card"]["distillation"]["complementary"]
        assert comp["method"] == "clusters" and comp["class_owner"] == part["class_owner"]
        assert comp["owns"] == part["clusters"][name]
    code, out, err = cli(selector_main, ["--run-dir", run, "--width", "1", *SLICE])
    assert code == 0, err
    assert load_checkpoint(teacher_run / "selector/best.pt")["card"]["target"] == "owner"
    assert "selector target: owner" in out


def test_independent_student_and_owner_target_without_partition(tmp_path, teacher_run, cli):
    run = str(tmp_path)
    teacher = str(teacher_run / "teacher/best.pt")
    for model in ("test_tiny_cnn", "test_small_cnn"):  # --complementary none: today's students
        code, _, err = cli(student_main, ["--run-dir", run, "--model", model, "--teacher", teacher,
                                          "--teacher-cache", "2", *SLICE])
        assert code == 0, err
        card = load_checkpoint(tmp_path / f"students/{model}/best.pt")["card"]
        assert card["distillation"]["complementary"] == {"method": "none"}
    assert not RunDir(run).teacher.partition("clusters").exists()
    code, _, err = cli(selector_main, ["--run-dir", run, "--width", "1", "--target", "owner", *SLICE])
    assert code == 2 and "--target owner" in err and err.count("\n") == 1
    code, out, err = cli(selector_main, ["--run-dir", run, "--width", "1", *SLICE])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "selector/best.pt")["card"]["target"] == "prob"


@pytest.mark.parametrize("argv, words", [
    (["--complementary", "experts"], "--complementary experts"),
    (["--complementary", "clusters", "--no-teacher"], "drop --no-teacher"),
    (["--other-weight", "0"], "--other-weight 0.0: must be in (0, 1]"),
])
def test_bad_complementary_settings_are_refused_in_one_line(tmp_path, cli, argv, words):
    code, _, err = cli(student_main, ["--run-dir", str(tmp_path), "--model", "test_tiny_cnn", *argv, *SLICE])
    assert code == 2 and words in err and err.count("\n") == 1
