"""moskd.run: the run directory's layout as DESIGN.md fixes it, the missing-stage message, where a
--limit report goes, and atomic writes that a kill or a failure mid-write cannot leave half done."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moskd.errors import MoskdError
from moskd.run import RunDir
from moskd.config import run_dir_argument
from moskd.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text()


def rel(path: Path, run: RunDir) -> str:
    return path.relative_to(run.root).as_posix()


# ---------------------------------------------------------------- the layout against DESIGN.md


def design_layout() -> dict[str, list[str]]:
    """The shared contract's RUN/ block: folder -> the files it lists."""
    block = re.search(r"```\nRUN/\n(.*?)```", DESIGN, flags=re.S).group(1)
    layout = {}
    for line in block.splitlines():
        head, *files = line.split()
        layout[head] = [f for f in files if re.fullmatch(r"[\w.<>*/-]+", f)]
    return layout


def test_stage_folders_hold_the_files_design_lists():
    run, layout = RunDir("RUN"), design_layout()
    stages = {"teacher/": run.teacher, "students/<arch>/": run.student("<arch>"), "selector/": run.selector}
    for folder, stage in stages.items():
        assert rel(stage.path, run) + "/" == folder
        for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml"):
            assert name in layout[folder], (folder, name)
        assert [p.name for p in (stage.best, stage.last, stage.metrics, stage.config)] == \
            ["best.pt", "last.pt", "metrics.jsonl", "config.yaml"]
    assert run.selector.labels.name.startswith("labels.") and "labels.*" in layout["selector/"]
    report = run.report()
    assert [rel(p, run) for p in (report.json, report.md, report.plot("x"), report.eval_arrays("<split>"))] == \
        ["report.json", "report.md", "plots/x.png", "eval/<split>.npz"]
    assert {"report.md", "plots/*.png", "eval/<split>.npz"} <= set(layout["report.json"])


@pytest.mark.parametrize("path,documented", [
    (lambda r: r.teacher.summary, "summary.json"),
    (lambda r: r.teacher.curves, "curves.png"),
    (lambda r: r.student(r.student_name("<arch>", baseline=True)).path, "RUN/students/<arch>-baseline/"),
    (lambda r: r.teacher_cache("<K>"), "RUN/teacher/cache/views-k<K>/"),
    (lambda r: r.selector.labels, "RUN/selector/labels.pt"),
    (lambda r: r.report().eval_meta, "RUN/eval/meta.json"),
    (lambda r: r.report().eval_arrays("select"), "RUN/eval/{select,test[,spare]}.npz"),
    (lambda r: r.report().policy, "RUN/policy.json"),
    (lambda r: r.seed("<k>").root, "RUN/seed<k>/"),
    (lambda r: r.seeds_json, "RUN/seeds.json"),
    (lambda r: r.seeds_md, "RUN/seeds.md"),
    (lambda r: r.pipeline_timings, "RUN/pipeline_timings.json"),
    (lambda r: r.report(50).json.parent, "RUN/report-limit<N>/"),
])
def test_every_run_path_is_the_one_design_names(path, documented):
    run = RunDir("RUN")
    got = "RUN/" + rel(path(run), run)
    assert documented in DESIGN, f"DESIGN.md does not name {documented}"
    if documented.startswith("RUN/"):
        want = documented.rstrip("/").replace("{select,test[,spare]}", "select").replace("<N>", "50")
        assert got == want
    else:
        assert got.endswith("/" + documented)


# ---------------------------------------------------------------- the first missing stage


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def refusal(run: RunDir, *stages: str) -> str:
    with pytest.raises(MoskdError) as e:
        run.require(*stages)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_missing_run_directory_is_named_as_such(tmp_path):
    msg = refusal(RunDir(tmp_path / "typo"), "selector")
    assert "no such run directory" in msg and "--run-dir" in msg and "trainSelector" not in msg


def test_the_first_missing_stage_and_its_command_are_named(tmp_path):
    run = RunDir(tmp_path)
    assert f"teacherTrain --run-dir {tmp_path}" in refusal(run, "students", "selector")
    touch(run.teacher.best)
    msg = refusal(run, "students", "selector")
    assert f"StudentTrain --run-dir {tmp_path} --model 1" in msg and "trainSelector" not in msg
    touch(run.student("densenet121").best)
    assert f"trainSelector --run-dir {tmp_path}" in refusal(run, "students", "selector")
    touch(run.selector.best)
    run.require("teacher", "students", "selector")  # a whole run passes


def test_students_distilled_from_another_teacher_need_no_teacher_folder(tmp_path):
    run = RunDir(tmp_path)
    touch(run.student("a").best)
    touch(run.selector.best)
    run.require("students", "selector")
    assert f"teacherTrain --run-dir {tmp_path}" in refusal(run, "teacher", "students", "selector")


def test_run_dir_given_twice_differently_is_refused():
    assert run_dir_argument("a", None) == "a" and run_dir_argument(None, "b") == "b"
    assert run_dir_argument("a", "a") == "a" and run_dir_argument(None, None, "runs/digits") == "runs/digits"
    with pytest.raises(MoskdError, match="two run directories"):
        run_dir_argument("a", "b")


# ---------------------------------------------------------------- a --limit report goes beside the full one


def test_limited_report_goes_beside_unless_the_run_itself_was_limited(tmp_path):
    run = RunDir(tmp_path)
    assert run.report().path == tmp_path and run.report(50).path == tmp_path / "report-limit50"
    assert run.report(50).json != run.report().json and run.report(50).eval != run.report().eval
    run.selector.config.parent.mkdir(parents=True)
    run.selector.config.write_text("limit: 48\nepochs: 2\n")  # a smoke pipeline: every stage saw 48 images
    assert run.report(48).path == tmp_path  # that is the run's own, whole test split
    assert run.report(20).path == tmp_path / "report-limit20"


# ---------------------------------------------------------------- atomic writes


WRITER = textwrap.dedent("""
    import json, os, sys, time
    import moskd.atomic

    class HalfThenHang:
        '''A file whose write() puts half the bytes on disk, says so, then hangs (to be killed).'''
        def __init__(self, f): self.f = f
        def write(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush(); os.fsync(self.f.fileno())
            print("half written", flush=True)
            time.sleep(120)
            self.f.write(data[len(data) // 2:])
        def __getattr__(self, name): return getattr(self.f, name)
        def __enter__(self): return self
        def __exit__(self, *exc): return self.f.__exit__(*exc)

    path, how = sys.argv[1], sys.argv[2]
    new = {"new": "x" * 1_000_000}
    if how == "atomic":
        real = os.fdopen
        os.fdopen = lambda *a, **k: HalfThenHang(real(*a, **k))
        moskd.atomic.write_json(path, new)
    else:  # in place, as Path.write_text does: what the test must be able to catch
        with open(path, "w") as f:
            HalfThenHang(f).write(json.dumps(new))
""")


@pytest.mark.parametrize("how", ["atomic", "in-place"])
def test_a_kill_during_the_write_leaves_the_old_file_whole(tmp_path, how):
    path = tmp_path / "summary.json"
    old = {"best_select": 0.9, "epochs": 3}
    path.write_text(json.dumps(old))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), how], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "half written"  # the kill lands mid-write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    if how == "atomic":
        assert json.loads(path.read_text()) == old
        assert [p.name for p in tmp_path.iterdir() if p != path][0].startswith(".summary.json.")  # the half file
    else:  # the harness does see a torn file when the write is not atomic
        with pytest.raises(json.JSONDecodeError):
            json.loads(path.read_text())


def test_a_failure_during_the_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_json(path, {"old": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_json(path, {"new": list(range(100_000))})
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    monkeypatch.undo()
    write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"new": 2}
