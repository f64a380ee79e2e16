"""StudentTrain: distil the teacher into a student on `train`, choose its checkpoint on `select`.

    StudentTrain --run-dir RUN --model 1            # DenseNet121 from RUN/teacher/best.pt
    StudentTrain --run-dir RUN --model 2            # GoogLeNet, same shared teacher-logit cache
    StudentTrain --run-dir RUN --model 1 --no-teacher   # the plain baseline, for comparison

Writes RUN/students/<arch>/ (or RUN/students/<arch>-baseline/ with --no-teacher):
best.pt, last.pt, metrics.jsonl, config.yaml, summary.json, curves.png.
Loss: alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher/T || student/T), or MSE logit
matching with --kd-loss mse. With --teacher-cache K (default) the teacher's logits for K augmented
views of every train image are computed once into RUN/teacher/cache/ and shared by all students.
"""
from __future__ import annotations

from moskd.errors import cli_entry
from moskd.sections import parse_config
from students.config import StudentConfig, SweepConfig

PROG = "StudentTrain"


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then train."""
    cfg = parse_config(StudentConfig, argv, PROG, __doc__, section="students")
    from moskd.runtime import run_stage
    from students.train import run

    return run_stage(cfg, run)



@cli_entry("moskd sweep")
def sweep_main(argv=None):
    """moskd sweep: a temperature x alpha x seed grid for one student, plus its baseline (students.sweep).
    Settings come from the `students` section of --config, then its `sweep` section."""
    from students import sweep

    cfg = parse_config(SweepConfig, argv, "moskd sweep", sweep.__doc__, section=("students", "sweep"))
    from moskd.runtime import run_stage

    return run_stage(cfg, sweep.sweep)


if __name__ == "__main__":
    main()
