"""Shipped recipes parse for every stage; digits.yaml is exactly the code's defaults."""
import dataclasses
from pathlib import Path

import pytest

from moskd.sections import load_yaml_overrides
from selector.config import SelectorConfig
from students.config import StudentConfig
from teacher.config import TeacherConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STAGES = {"teacher": TeacherConfig, "students": StudentConfig, "selector": SelectorConfig}


def _default(cls, name):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("section,cls", STAGES.items())
def test_digits_recipe_equals_code_defaults(section, cls):
    values = load_yaml_overrides(cls, str(CONFIGS / "digits.yaml"), section)
    assert values, section
    for name, value in values.items():
        assert value == _default(cls, name), (section, name)


RECIPES = {"cifar10.yaml": [3, 32, 32], "cifar100.yaml": [3, 32, 32], "fashion-mnist.yaml": [1, 28, 28],
           "fashion-mnist-cpu.yaml": [1, 28, 28], "fashion-mnist-gpu.yaml": [1, 28, 28], "digits.yaml": [1, 8, 8]}


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "digits.yaml"])
@pytest.mark.parametrize("section,cls", STAGES.items())
def test_shipped_recipes_are_valid_for_every_stage(name, section, cls):
    values = load_yaml_overrides(cls, str(CONFIGS / name), section)
    assert values["dataset"] == name.removesuffix(".yaml").removesuffix("-cpu").removesuffix("-gpu") and values["epochs"] > 0


@pytest.mark.parametrize("name, size", RECIPES.items())
def test_shipped_recipes_keep_the_selector_within_its_mac_budget(name, size):
    """trainSelector refuses a selector over 5% of the cheapest student's MACs: a recipe must not ask for one."""
    from moskd.models import create_model, stem_kwargs
    from moskd.profile import count_macs
    from moskd.selector_net import SelectorCNN
    from selector.train import MAC_BUDGET

    student = load_yaml_overrides(StudentConfig, str(CONFIGS / name), "students")
    width = load_yaml_overrides(SelectorConfig, str(CONFIGS / name), "selector").get("width", 32)
    stem = student.get("stem", "cifar")
    cheapest = min(count_macs(create_model(a, 10, size[0], **stem_kwargs(a, stem)), size)
                   for a in ("densenet121", "googlenet"))
    assert count_macs(SelectorCNN(2, size[0], width), size) <= MAC_BUDGET * cheapest, (name, width)


def test_flags_override_the_section_which_overrides_the_top_level(tmp_path):
    from moskd.sections import parse_config
    from moskd.errors import MoskdError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 5\nlr: 0.5\nbatch_size: 8\nstudents:\n  epochs: 9\n  alpha: 0.25\nteacher:\n  lr: 0.01\n")
    s = parse_config(StudentConfig, ["--config", str(cfg), "--lr", "0.07"], "StudentTrain", "", "students")
    assert (s.epochs, s.lr, s.batch_size, s.alpha) == (9, 0.07, 8, 0.25)
    t = parse_config(TeacherConfig, ["--config", str(cfg)], "teacherTrain", "", "teacher")
    assert (t.epochs, t.lr, t.batch_size) == (5, 0.01, 8)
    cfg.write_text("epochs: true\n")
    with pytest.raises(MoskdError, match="'epochs' must be int"):
        parse_config(TeacherConfig, ["--config", str(cfg)], "teacherTrain", "", "teacher")
    cfg.write_text("students:\n  temprature: 3\n")
    with pytest.raises(MoskdError, match="unknown setting 'temprature'"):
        parse_config(StudentConfig, ["--config", str(cfg)], "StudentTrain", "", "students")
