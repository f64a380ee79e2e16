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



SWEEP_DOC = 'moskd sweep: a temperature x alpha x seed grid for one student, plus its baseline.\n\n    moskd sweep --run-dir RUN --model 1 --temperatures 1 10 30 50 100 --alphas 0 0.5 1 --seeds 0 1 2\n\nEach run trains in-process with StudentTrain\'s recipe (every StudentTrain flag applies) into\nRUN/sweep/<name>/; all of them read the one teacher-logit cache in RUN/teacher/cache/, so the\nteacher\'s forward pass is paid once for the whole sweep. Writes RUN/sweep/<arch>-results.{md,csv}\n(mean ± std over seeds) and RUN/sweep/<arch>-runs.csv (one row per run) with select accuracy of\nthe chosen epoch, test accuracy of that checkpoint (best on `select`) and of the last epoch.\n\nalpha = 1 gives the teacher no weight, so it is the baseline student: it is trained once per seed\n(as <arch>-baseline) however many temperatures are swept. Likewise MSE logit matching has no\ntemperature, so --kd-loss mse collapses the temperature axis. A finished run is reused when the\nsweep is run again (--force retrains), an interrupted one is resumed.\n"""\n'


@cli_entry("moskd sweep")
def sweep_main(argv=None):
    """Settings come from the `students` section of --config, then its `sweep` section."""
    cfg = parse_config(SweepConfig, argv, "moskd sweep", SWEEP_DOC, section=("students", "sweep"))
    from moskd.runtime import run_stage
    from students.sweep import sweep

    return run_stage(cfg, sweep)


if __name__ == "__main__":
    main()
