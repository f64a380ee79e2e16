"""Plumbing between the commands: sweeps, seeds and finished stages (issue 20's bugs, each pinned)."""
import csv
import json

import pytest

from students.cli import sweep_main
from teacher.cli import main as teacher_main
from tests.test_pipeline import small_seed_models

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


def fake_stages(monkeypatch):
    """moskd pipeline's steps with stand-in stages: each training step writes its stage folder
    (a teacher's best.pt names the run it was trained in and how many teachers came before), the
    report step a report.json; returns the log of (stage, run dir, force) calls."""
    import moskd.pipeline as pipeline
    from moskd.run import RunDir
    from tests.test_seeds import fake_report

    calls = []

    def fake(name: str, run: RunDir):
        def call(force: bool, resume: bool):
            calls.append((name, run.root, force))
            if name == "fake.report":
                run.report().json.write_text(json.dumps(fake_report(0)))
                return
            stage = run.teacher if name == "fake.teacher" else run.student("densenet121")
            stage.path.mkdir(parents=True, exist_ok=True)
            for path in (stage.best, stage.last, stage.summary):
                path.unlink(missing_ok=True)  # as the atomic writers do: a new file, never one written through
                path.write_text(f"{name} in {run.root}, #{len(calls)}")
        return call

    def steps(cfg, recipe):
        run = RunDir(cfg.run_dir)
        return [pipeline.PipelineStep("teacher", fake("fake.teacher", run), run.teacher.path),
                pipeline.PipelineStep("student densenet121", fake("fake.student", run), run.student("densenet121").path),
                pipeline.PipelineStep("report", fake("fake.report", run))]

    monkeypatch.setattr(pipeline, "steps", steps)
    return calls


@pytest.mark.parametrize("borrowed", [False, True])
def test_seeds_with_force_train_one_teacher_and_share_it(tmp_path, monkeypatch, borrowed):
    """`--seeds ... --force` used to retrain the shared teacher (or the --teacher-from one) in every
    seed while seeds.json said teacher_shared and recorded seed 0's hash."""
    import hashlib

    from moskd.pipeline import run_seeds
    from moskd.sections import PipelineConfig
    from moskd.run import RunDir

    calls = fake_stages(monkeypatch)
    source = None
    if borrowed:
        source = RunDir(tmp_path / "other").teacher
        source.path.mkdir(parents=True)
        for path in (source.best, source.summary):
            path.write_text("the borrowed teacher")
    root = RunDir(tmp_path / "run")
    cfg = PipelineConfig(run_dir=str(root.root), seeds=[0, 1, 2], device="cpu",
                         teacher_from=str(source.path) if source else None)
    run_seeds(cfg)
    calls.clear()
    run_seeds(PipelineConfig(**{**cfg.__dict__, "force": True}))
    teachers = [c for c in calls if c[0] == "fake.teacher"]
    assert [t[1] for t in teachers] == ([] if borrowed else [root.seed(0).root])  # trained once, or never
    assert all(c[2] for c in calls if c[0] == "fake.student")  # the rest is redone per seed (force)
    digests = {hashlib.sha256(root.seed(k).teacher.best.read_bytes()).hexdigest() for k in (0, 1, 2)}
    saved = json.loads(root.seeds_json.read_text())
    assert saved["teacher_shared"] is True and digests == {saved["teacher_sha256"]}
    if borrowed:
        assert root.seed(1).teacher.best.read_text() == "the borrowed teacher"
