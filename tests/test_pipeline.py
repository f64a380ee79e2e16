"""`moskd pipeline` end to end on a small slice of digits: artefacts, skip on rerun, resume after a kill."""
import json

import pytest

import moskd.engine
import moskd.models
from moskd.checkpoint import load_checkpoint
from moskd.pipeline import main as pipeline_main
from moskd.run import RunDir, StageDir
from moskd.pipeline import steps as pipeline_steps
from moskd.sections import PipelineConfig
from tests.conftest import TinyCNN

pytestmark = pytest.mark.usefixtures("one_thread")  # small inputs: thread hand-offs cost more than they save
SMALL = ["--dataset", "digits", "--limit", "48", "--epochs", "2", "--no-baselines", "--device", "cpu"]


def small_seed_models(monkeypatch, tmp_path) -> list[str]:
    """The three seed architectures' names bound to small CNNs (dearest teacher, then densenet121,
    then googlenet, as with the real ones) and a selector narrow enough for their MAC budget: the
    pipeline's orchestration is under test here, not the architectures (tests/test_models.py)."""
    for name, width in (("resnet50", 32), ("densenet121", 24), ("googlenet", 16)):
        monkeypatch.setitem(moskd.models.REGISTRY, name,
                            lambda num_classes, in_chans=3, w=width, **_: TinyCNN(num_classes, in_chans, w, depth=2))
    cfg = tmp_path / "small.yaml"
    cfg.write_text("selector:\n  width: 2\n")
    return ["--config", str(cfg)]


def test_pipeline_end_to_end_then_skips_and_resumes(tmp_path, monkeypatch, cli):
    run = tmp_path / "run"
    args = ["--run-dir", str(run), *SMALL, *small_seed_models(monkeypatch, tmp_path), "--keep-last", "yes"]

    # first run: killed right after GoogLeNet's first epoch checkpoint
    real_save = moskd.engine.save_checkpoint

    def die_in_googlenet(obj, path):
        real_save(obj, path)
        if path.name == "last.pt" and obj["card"]["arch"] == "googlenet" and obj["card"]["role"] == "student" \
                and obj["epoch"] == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(moskd.engine, "save_checkpoint", die_in_googlenet)
    code, out, err = cli(pipeline_main, args)
    assert code == 130 and "--resume" in err
    assert (run / "students/densenet121/summary.json").exists()
    assert not (run / "students/googlenet/summary.json").exists()
    monkeypatch.setattr(moskd.engine, "save_checkpoint", real_save)
    # the interrupted run kept what its stages took, the killed one's part included
    part = json.loads(RunDir(run).pipeline_timings.read_text())
    assert part["teacher"] > 0 and part["student googlenet (distilled)"] > 0

    # second run: finished stages skipped, the killed one resumed, the rest run
    code, out, err = cli(pipeline_main, args)
    assert code == 0, err
    second = json.loads(RunDir(run).pipeline_timings.read_text())
    assert second["teacher"] == part["teacher"]  # skipped: the time it took when it ran
    assert second["student googlenet (distilled)"] > part["student googlenet (distilled)"]  # resumed: adds
    assert "teacher: skipped (finished)" in out
    assert "student densenet121 (distilled): skipped (finished)" in out
    assert "student googlenet (distilled): resumed" in out
    assert "selector: done" in out
    epochs = [json.loads(x)["epoch"] for x in (run / "students/googlenet/metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]

    for rel in ("teacher/best.pt", "teacher/last.pt", "teacher/metrics.jsonl", "teacher/config.yaml",
                "students/densenet121/best.pt", "students/googlenet/last.pt", "students/googlenet/config.yaml",
                "selector/best.pt", "selector/last.pt", "selector/metrics.jsonl", "selector/config.yaml",
                "report.json", "report.md"):
        assert (run / rel).is_file(), rel
    assert list((run / "selector").glob("labels.*")) and list((run / "plots").glob("*.png"))
    assert list((run / "teacher/cache").iterdir())
    assert load_checkpoint(run / "selector/best.pt", role="selector")["card"]["num_classes"] == 2

    report = json.loads((run / "report.json").read_text())
    assert report["dataset"] == "digits" and report["split"] == "test" and report["num_images"] == 48
    assert {"teacher", "densenet121", "googlenet"} <= set(report["models"])
    assert 0 <= report["routed"]["accuracy"] <= report["oracle"]["accuracy"] <= 1
    assert abs(sum(report["routed"]["route_share"].values()) - 1) < 1e-6
    # every declared step's output sits where moskd.run says (the run's own --limit: the full report)
    layout = RunDir(run)
    steps = [s for s in pipeline_steps(PipelineConfig(run_dir=str(run), baselines=False), None) if s.out is not None]
    assert [s.out for s in steps] == [layout.teacher.path, layout.student("densenet121").path,
                                      layout.student("googlenet").path, layout.selector.path]
    for s in steps:
        stage = StageDir(s.out)
        assert all(p.is_file() for p in (stage.best, stage.summary, stage.metrics, stage.config, stage.curves)), s
    report_dir = layout.report(48)
    assert report_dir.json == layout.report().json and report_dir.eval_arrays("test").is_file()
    assert report_dir.eval_meta.is_file() and layout.pipeline_timings.is_file()

    # third run: everything finished, nothing retrained; the skipped stages keep the times they took
    before = (run / "teacher/last.pt").stat().st_mtime_ns
    took = json.loads(layout.pipeline_timings.read_text())
    code, out, _ = cli(pipeline_main, args)
    assert code == 0 and out.count("skipped (finished)") == 4
    assert (run / "teacher/last.pt").stat().st_mtime_ns == before
    now = json.loads(layout.pipeline_timings.read_text())
    trained = [s.title for s in steps]
    assert all(now[t] == took[t] for t in trained), (took, now)


def test_pipeline_leaves_only_slim_checkpoints_by_default(tmp_path, monkeypatch, cli):
    """A finished pipeline stage needs no optimizer state: `moskd pipeline` drops every last.pt
    unless --keep-last yes (issue 20: the default digits run was 750 MB)."""
    run = tmp_path / "run"
    code, _, err = cli(pipeline_main, ["--run-dir", str(run), *SMALL, *small_seed_models(monkeypatch, tmp_path)])
    assert code == 0, err
    assert not list(run.rglob("last.pt"))  # every finished stage dropped its optimizer state
    for best in run.rglob("best.pt"):
        assert not {"optimizer", "scheduler"} & load_checkpoint(best).keys(), best
    assert json.loads((run / "report.json").read_text())["num_images"] == 48


def test_pipeline_complementary_on_a_borrowed_teacher(tmp_path, monkeypatch, cli):
    """--teacher-from links a finished teacher in (not retrained); --complementary clusters reaches both
    distilled students, and the selector then learns which student owns each image."""
    small = small_seed_models(monkeypatch, tmp_path)
    first = tmp_path / "a"
    code, _, err = cli(pipeline_main, ["--run-dir", str(first), *SMALL, *small])
    assert code == 0, err
    run = tmp_path / "b"
    code, out, err = cli(pipeline_main, ["--run-dir", str(run), *SMALL, *small, "--teacher-from",
                                         str(first / "teacher"), "--complementary", "clusters"])
    assert code == 0, err
    assert "teacher: shared (linked in, not retrained)" in out
    assert (run / "teacher/best.pt").stat().st_ino == (first / "teacher/best.pt").stat().st_ino
    for arch in ("densenet121", "googlenet"):
        card = load_checkpoint(run / f"students/{arch}/best.pt")["card"]
        assert card["distillation"]["complementary"]["method"] == "clusters"
    assert load_checkpoint(run / "selector/best.pt")["card"]["target"] == "owner"
    code, _, err = cli(pipeline_main, ["--run-dir", str(tmp_path / "c"), *SMALL, "--teacher-from", str(tmp_path)])
    assert code == 2 and "--teacher-from" in err and err.count("\n") == 1
