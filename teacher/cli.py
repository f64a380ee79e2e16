"""teacherTrain: train the teacher on `train`, choose its checkpoint on `select`.

Writes RUN/teacher/{best.pt,last.pt,metrics.jsonl,config.yaml,summary.json}.
Multi-GPU: torchrun --nproc-per-node 2 -m teacher.cli --run-dir RUN ...
"""
from __future__ import annotations

from moskd.errors import cli_entry
from moskd.sections import parse_config
from teacher.config import TeacherConfig

PROG = "teacherTrain"


@cli_entry(PROG)
def main(argv=None):
    """Parse (no torch yet: --help and bad flags answer at once), then train."""
    cfg = parse_config(TeacherConfig, argv, PROG, __doc__, section="teacher")
    from moskd.runtime import run_stage
    from teacher.train import run

    return run_stage(cfg, run)


if __name__ == "__main__":
    main()
