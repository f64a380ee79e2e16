"""Shipped recipes parse for every stage; digits.yaml is exactly the code's defaults."""
import dataclasses
from pathlib import Path

import pytest

from moskd.config import load_yaml_overrides
from selector.train import SelectorConfig
from students.train import StudentConfig
from teacher.train import TeacherConfig

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


@pytest.mark.parametrize("name", ["cifar10.yaml", "cifar100.yaml"])
@pytest.mark.parametrize("section,cls", STAGES.items())
def test_cifar_recipes_are_valid_for_every_stage(name, section, cls):
    values = load_yaml_overrides(cls, str(CONFIGS / name), section)
    assert values["dataset"] == name.removesuffix(".yaml") and values["epochs"] > 0
