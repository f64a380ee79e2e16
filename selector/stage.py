"""Stage 3: label `select` with the students' correctness and train the selector (RUN/selector/).

This module is the stage's declaration to moskd (the core; see moskd.stages): its commands, its
pipeline steps and its model module (selector.model registers `selector_cnn`). It stays free of
heavy imports, so `moskd --help` is instant, and out of the package's __init__, so importing the
package does not import moskd.
"""
from moskd.stages import Command, StageInfo, Step


def _steps(run, options: dict) -> list[Step]:
    return [Step("selector", "selector.train", out=run.selector.path)]


STAGE = StageInfo(
    "selector", order=3,
    commands=(Command("selector", "selector.cli",
                      "stage 3: label select images and train the selector (trainSelector)"),),
    models=("selector.model",),
    steps=_steps,
    sections=(("selector", "selector.cli:SelectorConfig"),),
)
