"""Plumbing between the commands: sweeps, seeds and finished stages (issue 20's bugs, each pinned)."""
import csv
import json

import pytest

from moskd.pipeline import main as pipeline_main
from students.sweep import main as sweep_main
from teacher.cli import main as teacher_main
from tests.test_pipeline import SMALL, small_seed_models

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--dataset", "digits", "--limit", "48", "--epochs", "1", "--device", "cpu"]


def test_sweep_with_keep_last_no_scores_every_run_and_drops_its_last_pt(tmp_path, monkeypatch, cli):
    """`--keep-last no` used to delete last.pt in the first run's finish, before the sweep read it
    for the last-epoch accuracy: the sweep died after its first run."""
    small = small_seed_models(monkeypatch, tmp_path)
    run = tmp_path / "run"
    code, _, err = cli(teacher_main, ["--run-dir", str(run), *TINY, *small])
    assert code == 0, err
    code, _, err = cli(sweep_main, ["--run-dir", str(run), *TINY, *small, "--model", "1", "--temperatures", "2",
                                    "--alphas", "0.5", "--seeds", "0", "--keep-last", "no"])
    assert code == 0, err
    rows = list(csv.DictReader(open(run / "sweep" / "densenet121-runs.csv")))
    assert [r["name"] for r in rows] == ["densenet121-T2-a0.5", "densenet121-baseline"]
    assert all(0 <= float(r["test_acc_last"]) <= 1 for r in rows)
    assert not list((run / "sweep").rglob("last.pt")) and len(list((run / "sweep").rglob("best.pt"))) == 2
    # a second sweep reuses the finished runs (no last.pt needed)
    code, _, err = cli(sweep_main, ["--run-dir", str(run), *TINY, *small, "--model", "1", "--temperatures", "2",
                                    "--alphas", "0.5", "--seeds", "0", "--keep-last", "no"])
    assert code == 0, err
