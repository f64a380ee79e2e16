"""The README's commands and the CLI stay true to the code."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _readme_commands()[1].strip()
    ci = (ROOT / ".ci/run").read_text()
    assert test_cmd in ci.splitlines()
    assert "pytest" in test_cmd


def test_readme_main_command_runs_the_pipeline_on_digits():
    main_cmd = _readme_commands()[0]
    assert "--dataset digits" in main_cmd and "pip install" in main_cmd


def test_console_scripts_are_declared():
    text = (ROOT / "pyproject.toml").read_text()
    for script in ("teacherTrain", "StudentTrain", "trainSelector", "inference", "moskd"):
        assert re.search(rf"^{script} = ", text, flags=re.M), script


def test_umbrella_lists_every_stage_and_rejects_unknown():
    out = subprocess.run([sys.executable, "-m", "moskd.cli", "--help"], capture_output=True, text=True)
    for name in ("teacher", "student", "selector", "inference", "report", "sweep", "pipeline"):
        assert f"  {name}" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "moskd.cli", "teach"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "teacher" in bad.stderr


def test_help_of_teacher_train_names_the_seed_flags(cli):
    from teacher.cli import main as teacher_main

    code, out, _ = cli(teacher_main, ["--help"])  # in-process: a subprocess would only add torch's import time
    assert code == 0
    for flag in ("--run-dir", "--dataset", "--data-dir", "--download", "--arch", "--epochs", "--batch-size", "--lr",
                 "--optimizer", "--scheduler", "--lr-milestones", "--weight-decay", "--momentum",
                 "--label-smoothing", "--seed", "--resume", "--device", "--config"):
        assert flag in out, flag
    assert "--run " not in out


def test_ci_runs_the_two_process_gloo_teacher_through_torchrun():
    ci = (ROOT / ".ci/run").read_text()
    assert ".ci/torchrun-teacher" in ci.splitlines()
    step = (ROOT / ".ci/torchrun-teacher").read_text()
    assert re.search(r"torchrun --standalone --nproc-per-node 2 --no-python \\\n\s+teacherTrain --run-dir", step)
    assert '["world_size"] == 2' in step
