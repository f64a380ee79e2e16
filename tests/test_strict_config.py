"""One parser for every command: config files are checked whole (unknown keys and sections named
with the nearest known one), and --help answers without importing torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moskd.sections import SECTIONS
from teacher.cli import main as teacher_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, words", [
    ("batchsize: 8\n", "unknown setting or section 'batchsize'; did you mean batch_size?"),
    ("student:\n  epochs: 3\n", "unknown setting or section 'student'; did you mean students?"),
    ("teacher:\n  epoch: 3\n", "unknown setting 'epoch' in section 'teacher'; did you mean epochs?"),
    ("selector:\n  widht: 8\n", "unknown setting 'widht' in section 'selector'; did you mean width?"),
    ("students: [a, b]\n", "section 'students' must be a mapping"),
    ("epochs: true\n", "'epochs' must be int"),
])
def test_unknown_keys_and_sections_are_named_with_the_nearest(text, words, cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    run = tmp_path / "run"
    # an unknown dataset: were the file accepted, the command would fail at once instead of training
    code, out, err = cli(teacher_main, ["--run-dir", str(run), "--config", str(cfg), "--dataset", "none"])
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not run.exists()


def test_top_level_keys_another_command_reads_are_accepted(tmp_path):
    """`temperature` is read by StudentTrain only; teacherTrain takes the file without it."""
    from moskd.sections import load_yaml_overrides
    from teacher.config import TeacherConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("temperature: 3\nholdout_fraction: 0.4\nbatch-size: 16\nsweep:\n  alphas: [0, 1]\n")
    assert load_yaml_overrides(TeacherConfig, str(cfg), "teacher") == {"batch_size": 16}


def test_sweep_settings_go_in_their_own_section(tmp_path):
    from moskd.sections import load_yaml_overrides
    from moskd.errors import MoskdError
    from students.config import StudentConfig, SweepConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("students:\n  alpha: 0.25\nsweep:\n  temperatures: [2, 3]\n")
    assert load_yaml_overrides(SweepConfig, str(cfg), ("students", "sweep")) == {"alpha": 0.25,
                                                                                  "temperatures": [2.0, 3.0]}
    assert load_yaml_overrides(StudentConfig, str(cfg), "students") == {"alpha": 0.25}
    cfg.write_text("students:\n  temperatures: [2, 3]\n")  # a sweep setting where StudentTrain reads
    with pytest.raises(MoskdError, match="unknown setting 'temperatures' in section 'students'"):
        load_yaml_overrides(StudentConfig, str(cfg), "students")


def test_static_choices_match_the_registries_they_stand_for():
    """The config modules load no torch, so they spell some registries' names; keep them equal."""
    from moskd.models import STEMS
    from moskd.values import choices_of
    from selector.config import TARGETS
    from students.losses import KD_LOSSES

    configs = SECTIONS
    for section in ("teacher", "students"):
        assert set(choices_of(configs[section])["stem"][0]) == set(STEMS), section
    assert list(choices_of(configs["students"])["kd_loss"][0]()) == list(KD_LOSSES)
    assert choices_of(configs["selector"])["target"][0] == TARGETS


# the commands whose --help must not import torch: every stage, and the dispatchers around them
HELP_COMMANDS = ["teacher", "student", "selector", "inference", "pipeline", "sweep", "results"]
NO_TORCH = """
import json, sys
from moskd.sections import SECTIONS  # every config class a config file can name
from moskd.cli import main
for command in {commands!r}:
    try:
        main([command, "--help"])
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)), file=sys.stderr)
"""


def test_help_answers_without_importing_torch():
    res = subprocess.run([sys.executable, "-c", NO_TORCH.format(commands=HELP_COMMANDS)], cwd=ROOT,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stderr.strip().splitlines()[-1]) == []
    for flag in ("--batch-size", "--kd-loss", "--target", "--output-format", "--temperatures", "--seeds"):
        assert flag in res.stdout, flag


def test_every_section_names_a_config_class():
    assert set(SECTIONS) == {"teacher", "students", "selector", "inference", "report", "policy", "export", "serve",
                             "pipeline", "sweep"}
    assert all(isinstance(c, type) for c in SECTIONS.values())
