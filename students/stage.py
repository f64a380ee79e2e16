"""Stage 2: distil the teacher into the students (RUN/students/<arch>/), and sweeps of the KD settings.

This module is the stage's declaration to moskd (the core; see moskd.stages): its commands and its
pipeline steps. It stays free of heavy imports, so `moskd --help` is instant, and out of the
package's __init__, so importing the package (e.g. a deployment running only inference.bundle)
does not import moskd.
"""
from moskd.stages import Command, StageInfo, Step


def _steps(run, options: dict) -> list[Step]:
    from moskd.values import SEED_STUDENTS  # `StudentTrain --model N` numbers; the pipeline trains each

    # the cache step always runs: it reuses a valid cache in a second and rebuilds a stale one
    steps = [Step("teacher-logit cache", "students.train", ("--cache-only",))]
    mode = ("--complementary", options["complementary"]) if options.get("complementary") else ()
    for key, arch in SEED_STUDENTS.items():  # --complementary reaches the distilled students; baselines stay plain
        steps.append(Step(f"student {arch} (distilled)", "students.train", ("--model", key, *mode),
                          run.student(run.student_name(arch)).path))
        if options["baselines"]:
            steps.append(Step(f"student {arch} (baseline, no teacher)", "students.train",
                              ("--model", key, "--no-teacher"), run.student(run.student_name(arch, True)).path))
    return steps


STAGE = StageInfo(
    "students", order=2,
    commands=(Command("student", "students.cli", "stage 2: distil the teacher into a student (StudentTrain)"),
              Command("sweep", "students.sweep", "grid of temperatures, alphas and seeds for one student")),
    steps=_steps,
    sections=(("students", "students.cli:StudentConfig"), ("sweep", "students.sweep:SweepConfig")),
)
