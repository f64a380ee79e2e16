"""Inputs refused or warned about before any training: an image folder with fewer than two
classes, images outside the class folders, a split with fewer images than classes, and a student
about to learn from a poor teacher."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import moskd.errors
from moskd.data import load_data
from students.cli import main as student_main
from students.teacher_check import poor_teacher_reason, warn_if_poor_teacher
from teacher.cli import main as teacher_main

SLICE = ["--limit", "48", "--batch-size", "48", "--eval-batch-size", "48", "--device", "cpu", "--epochs", "1"]
pytestmark = pytest.mark.usefixtures("one_thread", "fresh_warnings")


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Warnings are printed once per process; start each test with none printed yet."""
    monkeypatch.setattr(moskd.errors, "_warned", set())


def _images(folder, n, colour=(255, 0, 0)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 12), colour).save(folder / f"{i}.png")


@pytest.mark.parametrize("classes, found", [(["only"], "found 1 class folder(s) (only)"), ([], "found 0 class")])
def test_a_folder_dataset_needs_two_classes(classes, found, tmp_path, cli):
    data = tmp_path / "imgs"
    for c in classes:
        _images(data / c, 6)
    _images(data, 2)  # stray images beside (or instead of) the class folders
    run = tmp_path / "run"
    code, _, err = cli(teacher_main, ["--run-dir", str(run), "--dataset", f"folder:{data}", *SLICE])
    assert code == 2 and found in err and "needs >= 2" in err and str(data) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not run.exists()


def test_images_outside_class_folders_are_warned_about_and_ignored(tmp_path, capsys):
    _images(tmp_path / "red", 6)
    _images(tmp_path / "blue", 6, (0, 0, 255))
    Image.new("RGB", (12, 12)).save(tmp_path / "stray.png")
    d = load_data(f"folder:{tmp_path}", image_size=8, select_fraction=0.25, test_fraction=0.25)
    assert sum(len(s) for s in d.splits.values()) == 12  # the stray image is not in any split
    err = capsys.readouterr().err
    assert "warning: folder:" in err and "1 image(s) lie outside the class folders" in err and "stray.png" in err


def test_a_split_smaller_than_the_class_count_is_warned_about(capsys):
    load_data("digits", limit=6)
    err = capsys.readouterr().err.splitlines()
    assert sum("holds 6 image(s) for 10 classes" in ln for ln in err) == 3, err  # train, select, test
    load_data("digits", limit=10)
    assert "classes cannot appear" not in capsys.readouterr().err


@pytest.mark.parametrize("best, classes, target, poor", [
    (0.50, 10, None, True), (0.56, 10, None, False),  # halfway from chance (0.1) to 1 is 0.55
    (0.70, 2, None, True), (0.80, 2, None, False),  # two classes: halfway from 0.5 is 0.75
    (0.84, 10, 0.90, True), (0.86, 10, 0.90, False),  # a recipe's target: 5 points of slack
])
def test_what_counts_as_a_poor_teacher(best, classes, target, poor):
    assert (poor_teacher_reason(best, classes, target) is not None) == poor


def test_checkpoints_without_an_accuracy_are_not_judged(tmp_path):
    torch.save({"model": {}, "card": {}}, tmp_path / "t.pt")
    assert warn_if_poor_teacher(tmp_path / "t.pt", 10) is None
    torch.save({"model": {}, "best_metric": 0.97, "config": {"target_accuracy": None}}, tmp_path / "good.pt")
    assert warn_if_poor_teacher(tmp_path / "good.pt", 10) is None


def test_a_student_warns_once_about_a_teacher_far_below_its_target(tmp_path, cli):
    run = tmp_path / "run"
    code, _, err = cli(teacher_main, ["--run-dir", str(run), "--arch", "test_tiny_cnn", "--target-accuracy", "0.99",
                                      *SLICE])
    assert code == 0, err
    code, _, err = cli(student_main, ["--run-dir", str(run), "--model", "test_tiny_cnn", "--teacher-cache", "2",
                                      *SLICE])
    assert code == 0, err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: teacher")]
    assert len(warned) == 1 and "below its recipe's target 0.99" in warned[0], err
