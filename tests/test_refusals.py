"""Bad values are refused at parse time: one line naming the flag and what it must be, exit 2,
nothing written. The same for every command, whether the value comes from a flag or a config file."""
from __future__ import annotations

import pytest

from inference.cli import main as inference_main
from moskd.cli import main as moskd_main
from selector.cli import main as selector_main
from students.cli import main as student_main
from teacher.cli import main as teacher_main


def sub(command):
    """An umbrella subcommand as a console-script main."""
    return lambda argv: moskd_main([command, *argv])


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
    (inference_main, ["--escalate", "0.5"], "unrecognized arguments: --escalate"),
    (inference_main, ["--invert", "maybe"], "--invert maybe: choose one of auto, yes, no"),
    (inference_main, ["--fast", "fold+c"], "did you mean fold+cl?"),
    (inference_main, ["--output-format", "json"], "did you mean jsonl?"),
    (teacher_main, ["--device", "gpu"], "did you mean cuda?"),
    (teacher_main, ["--device", "cuda:x"], "--device cuda:x: choose auto, cpu, cuda or cuda:N"),
    (teacher_main, ["--keep-last", "noo"], "--keep-last noo: choose one of yes, no; did you mean no?"),
    (teacher_main, ["--stem", "imagnet"], "did you mean imagenet?"),
    (teacher_main, ["--seed", "-1"], "--seed -1: must be >= 0"),
    (teacher_main, ["--eval-batch-size", "0"], "--eval-batch-size 0: must be >= 1"),
    (teacher_main, ["--train-limit", "0"], "--train-limit 0: must be >= 1"),
    (teacher_main, ["--image-size", "0"], "--image-size 0: must be >= 1"),
    (teacher_main, ["--target-accuracy", "90"], "--target-accuracy 90.0: must be in (0, 1]"),
    (teacher_main, ["--epoch", "3"], "--epoch (did you mean --epochs?)"),
    (student_main, ["--kd-loss", "kll"], "--kd-loss kll: choose one of kl, mse; did you mean kl?"),
    (student_main, ["--resume", "--force"], "pass one of them"),
    (selector_main, ["--target", "probs"], "did you mean prob?"),
    (selector_main, ["--optimizer", "adamx"], "did you mean adamax?"),
    (sub("sweep"), ["--temperatures", "1", "0"], "--temperatures 0.0: must be > 0"),
    (sub("sweep"), ["--alphas", "0.5", "2"], "--alphas 2.0: must be in [0, 1]"),
    (sub("pipeline"), ["--epochs", "0"], "--epochs 0: must be >= 1"),
    (sub("pipeline"), ["--limit", "0"], "--limit 0: must be >= 1"),
    (sub("pipeline"), ["--device", "gpu"], "did you mean cuda?"),
    (sub("teacher"), ["--batch-size", "0"], "--batch-size 0: must be >= 1"),
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
    assert code == 2 and "c.yaml: teacher.epochs 0: must be >= 1" in err


@pytest.mark.parametrize("command, flags, words", [
    ("report", ["RUN", "--limit", "0"], "--limit 0: must be >= 1"),
    ("report", ["RUN", "--batch-size", "-4"], "--batch-size -4: must be >= 1"),
    ("report", ["RUN", "--device", "gpu"], "did you mean cuda?"),
    ("report", ["RUN", "--limt", "5"], "did you mean --limit?"),
    ("export", ["--run-dir", "RUN", "--out", "B", "--format", "onnxx"], "did you mean onnx?"),
    ("policy", ["RUN", "--target", "teacherr"], "--target teacherr: choose teacher, best-student or an accuracy"),
    ("policy", ["RUN", "--budget-macs", "-5"], "--budget-macs -5.0: must be > 0"),
    ("serve", ["--bundle", "B", "--port", "70000"], "--port 70000: must be in [0, 65535]"),
    ("serve", ["--bundle", "B", "--max-batch", "0"], "--max-batch 0: must be >= 1"),
    ("serve", ["--bundle", "B", "--threads", "0"], "--threads 0: must be >= 1"),
    ("clean", ["RUN", "--dry-rn"], "did you mean --dry-run?"),
    ("results", ["--chek"], "did you mean --check?"),
])
def test_every_command_checks_the_same_way(command, flags, words, cli, tmp_path):
    code, _, err = cli(sub(command), [str(tmp_path / f) if f in ("RUN", "B") else f for f in flags])
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_in_the_file_is_refused_before_anything_runs(cli, tmp_path):
    """Another stage's section is checked too: a pipeline would otherwise fail hours later."""
    cfg = tmp_path / "c.yaml"
    run = tmp_path / "run"
    for text, words in [
        ("selector:\n  epochs: 0\n", "c.yaml: selector.epochs 0: must be >= 1"),
        ("students:\n  kd_loss: kll\n", "c.yaml: students.kd_loss kll: choose one of kl, mse; did you mean kl?"),
        ("optimizer: adamx\n", "c.yaml: optimizer adamx: not one of the"),
        ("device: gpu\n", "did you mean cuda?"),
        ("inference:\n  batch_size: -1\n", "c.yaml: inference.batch_size -1: must be >= 1"),
    ]:
        cfg.write_text(text)
        code, _, err = cli(teacher_main, ["--run-dir", str(run), "--config", str(cfg), "--dataset", "none"])
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (text, err)
        assert not run.exists()
