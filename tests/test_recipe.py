"""Per-model schedules in a recipe's students section (`students: models: {<arch>: {...}}`): they
resolve for the architecture StudentTrain trains (by number or name, baselines included), flags
win over them, they reach the student's card and config.yaml, and a misspelt architecture or
setting is refused in one line with exit 2 before anything is written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from moskd.sections import load_yaml_overrides, parse_config
from students.config import PER_MODEL_KEYS, StudentConfig
from students.cli import main as student_main

RECIPE = """\
dataset: digits
students:
  epochs: 5
  lr: 0.01
  models:
    googlenet: {epochs: 12, lr: 0.002}
    densenet121: {epochs: 4, batch_size: 256}
"""


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def _parse(recipe: Path, *argv: str) -> StudentConfig:
    return parse_config(StudentConfig, ["--config", str(recipe), *argv], "StudentTrain", "", "students")


@pytest.mark.parametrize("argv, expected", [
    (["--model", "1"], (4, 256, 0.01)),                       # densenet121: its epochs and batch size, the section's lr
    (["--model", "densenet121"], (4, 256, 0.01)),
    (["--model", "2"], (12, 64, 0.002)),                      # googlenet: its epochs and lr, the default batch size
    (["--model", "2", "--no-teacher"], (12, 64, 0.002)),      # the baseline follows the architecture's schedule
    (["--model", "resnet18"], (5, 64, 0.01)),                 # no entry: the section alone
    (["--model", "2", "--epochs", "3", "--lr", "0.5"], (3, 64, 0.5)),   # flags win over the entry
    (["--model", "1", "--batch-size", "32"], (4, 32, 0.01)),
])
def test_per_model_values_resolve_and_flags_win(recipe, argv, expected):
    cfg = _parse(recipe, *argv)
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == expected


def test_the_model_named_in_the_file_picks_its_entry(recipe):
    recipe.write_text(RECIPE.replace("students:\n", "students:\n  model: '2'\n"))
    assert _parse(recipe).epochs == 12                      # the file's model
    assert _parse(recipe, "--model", "1").epochs == 4       # a flag's model over the file's
    assert load_yaml_overrides(StudentConfig, str(recipe), "students")["epochs"] == 12
    assert load_yaml_overrides(StudentConfig, str(recipe), "students", model="1")["batch_size"] == 256


def test_other_commands_read_the_file_without_the_entries(recipe):
    from moskd.sections import PipelineConfig
    from teacher.config import TeacherConfig

    assert load_yaml_overrides(TeacherConfig, str(recipe), "teacher") == {"dataset": "digits"}
    assert load_yaml_overrides(PipelineConfig, str(recipe), "pipeline") == {"dataset": "digits"}


def test_resolved_schedule_reaches_the_card_and_config_yaml(recipe, tmp_path, cli, one_thread):
    """A real (tiny) run: googlenet's entry gives 1 epoch and batch size 16, a flag gives the lr."""
    recipe.write_text(RECIPE.replace("googlenet: {epochs: 12, lr: 0.002}",
                                     "googlenet: {epochs: 1, batch_size: 16, lr: 0.002, warmup_epochs: 0}"))
    run = tmp_path / "run"
    code, _, err = cli(student_main, ["--config", str(recipe), "--run-dir", str(run), "--model", "2", "--no-teacher",
                                      "--limit", "32", "--eval-batch-size", "32", "--device", "cpu", "--lr", "0.004"])
    assert code == 0, err
    folder = run / "students" / "googlenet-baseline"
    card = torch.load(folder / "best.pt", weights_only=True)["card"]
    assert set(card["training"]) == set(PER_MODEL_KEYS)
    assert (card["training"]["epochs"], card["training"]["batch_size"], card["training"]["lr"]) == (1, 16, 0.004)
    assert card["training"]["warmup_epochs"] == 0
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert (config["epochs"], config["batch_size"], config["lr"]) == (1, 16, 0.004)
    epochs = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(epochs) == 1


@pytest.mark.parametrize("models, words", [
    ("    googlnet: {epochs: 3}\n", "unknown architecture 'googlnet'; did you mean googlenet?"),
    ("    '2': {epochs: 3}\n", "unknown architecture '2'"),
    ("    googlenet: {epoch: 3}\n", "models.googlenet: unknown setting 'epoch'; did you mean epochs?"),
    ("    googlenet: {alpha: 0.3}\n", "unknown setting 'alpha'"),
    ("    googlenet: {epochs: 0}\n", "students.models.googlenet.epochs 0: must be >= 1"),
    ("    googlenet: {lr: fast}\n", "'lr' must be float"),
    ("    googlenet: 12\n", "models.googlenet must be a mapping"),
])
def test_unknown_architecture_or_setting_is_refused_in_one_line(models, words, tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("students:\n  models:\n" + models)
    run = tmp_path / "run"
    # an unknown dataset: were the file accepted, the command would fail at once instead of training
    code, _, err = cli(student_main, ["--run-dir", str(run), "--config", str(cfg), "--dataset", "none"])
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not run.exists()


def test_only_a_section_whose_command_declares_them_takes_entries(tmp_path, cli):
    from teacher.cli import main as teacher_main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  models:\n    googlenet: {epochs: 3}\n")
    code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "run"), "--config", str(cfg), "--dataset", "none"])
    assert code == 2 and "unknown setting 'models' in section 'teacher'" in err, err


def test_seed_students_spelt_torch_free_equal_the_registry():
    from moskd import models, values

    import torchvision

    known = set(models.available_models()) | set(torchvision.models.list_models(module=torchvision.models))
    assert set(values.SEED_STUDENTS.values()) <= known  # names create_model builds
    assert set(StudentConfig.PER_MODEL.known) == set(values.SEED_STUDENTS.values())
