"""`moskd policy`: fit the run's routing policy on `select` and write RUN/policy.json, then the report.

    moskd policy --run-dir RUN [--from-eval] [--target teacher|best-student|ACC] [--budget-macs M]

Every family (the selector alone, max-softmax cascades, the selector's pick then deferral, learned
deferral, and each with committee answers) is scored on the selector's held-out `select` images;
learned deferral rules learn on `spare` (or the rest of `select`). The deployed point is the
fewest MACs whose `select` accuracy reaches the target's (default: the teacher's), else the most
accurate; --budget-macs M takes the most accurate within M MACs per image instead. `inference`,
`moskd export`, `moskd serve` and the report all decide through the file this writes.
With --from-eval it refits from RUN/eval/*.npz in seconds, without running a model.
"""
from __future__ import annotations

from moskd.errors import cli_entry


@cli_entry("moskd policy")
def main(argv=None):
    from inference.report import report_parser, run_report_cli

    a = report_parser("moskd policy", __doc__, refit_flag=False).parse_args(argv)
    run_report_cli(a, refit=True)


if __name__ == "__main__":
    main()
