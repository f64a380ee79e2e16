"""Bad values are refused at parse time: one line naming the flag and what it must be, exit 2,
nothing written."""
from __future__ import annotations

import pytest

from inference.predict import main as inference_main
from selector.train import main as selector_main
from students.train import main as student_main
from teacher.train import main as teacher_main


@pytest.mark.parametrize("main, flags, words", [
    (teacher_main, ["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (teacher_main, ["--batch-size", "-4"], "--batch-size -4: must be >= 1"),
    (teacher_main, ["--epochs", "0"], "--epochs 0: must be >= 1"),
    (teacher_main, ["--limit", "0"], "--limit 0: must be >= 1"),
    (teacher_main, ["--optimizer", "adamx"], "did you mean adamax?"),
    (teacher_main, ["--scheduler", "cosin"], "--scheduler cosin: choose one of"),
    (teacher_main, ["--lr", "0"], "--lr 0.0: must be > 0"),
    (teacher_main, ["--select-fraction", "1"], "--select-fraction 1.0: must be in (0, 1)"),
    (teacher_main, ["--resume", "--force"], "pass one of them"),
    (teacher_main, ["--device", "gpu"], "choose auto, cpu, cuda or cuda:N"),
    (teacher_main, ["--bacth-size", "3"], "did you mean --batch-size?"),
    (student_main, ["--alpha", "1.5"], "--alpha 1.5: must be in [0, 1]"),
    (student_main, ["--temperature", "0"], "--temperature 0.0: must be > 0"),
    (student_main, ["--teacher-cache", "-1"], "--teacher-cache -1: must be >= 0"),
    (selector_main, ["--holdout-fraction", "0"], "--holdout-fraction 0.0: must be in (0, 1)"),
    (selector_main, ["--width", "0"], "--width 0: must be >= 1"),
    (inference_main, ["--batch-size", "-1"], "--batch-size -1: must be >= 1"),
    (inference_main, ["--escalate", "-0.5"], "--escalate -0.5: must be >= 0"),
])
def test_bad_values_are_one_line_and_exit_2(main, flags, words, cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli(main, ["--run-dir", str(run), *flags])
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()  # refused before anything was written


def test_yaml_values_are_range_checked_too(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  epochs: 0\n")
    code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "run"), "--config", str(cfg)])
    assert code == 2 and "--epochs 0: must be >= 1" in err
