"""Stage 1: train the teacher (ResNet50 by default) into RUN/teacher/.

This module is the stage's declaration to moskd (the core; see moskd.stages): its commands and its
pipeline steps. It stays free of heavy imports, so `moskd --help` is instant, and out of the
package's __init__, so importing the package (e.g. a deployment running only inference.bundle)
does not import moskd.
"""
from moskd.stages import Command, StageInfo, Step


def _steps(run, options: dict) -> list[Step]:
    return [Step("teacher", "teacher.train", out=run.teacher.path)]


STAGE = StageInfo(
    "teacher", order=1,
    commands=(Command("teacher", "teacher.cli", "stage 1: train the teacher (teacherTrain)"),),
    steps=_steps,
    sections=(("teacher", "teacher.cli:TeacherConfig"),),
)
