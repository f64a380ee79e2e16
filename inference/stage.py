"""Stage 4: the router, routed predictions, the evaluation report, deployment bundles and serving.

This module is the stage's declaration to moskd (the core; see moskd.stages): its commands and its
pipeline steps. It stays free of heavy imports, so `moskd --help` is instant, and out of the
package's __init__, so importing the package (e.g. a deployment running only inference.bundle)
does not import moskd.
"""
from moskd.stages import Command, StageInfo, Step


def _steps(run, options: dict) -> list[Step]:
    # the pipeline's policy step: fit RUN/policy.json on select, then report on test
    return [Step("routing policy and evaluation report", "inference.report", argv=("--refit",), kind="report")]


STAGE = StageInfo(
    "inference", order=4,
    commands=(
        Command("inference", "inference.cli",
                "stage 4: routed predictions for files, folders or a split (inference)"),
        Command("report", "inference.report", "evaluation report of a run: report.json, report.md, plots"),
        Command("policy", "inference.policy_cli",
                "fit the routing policy on select (RUN/policy.json) and rewrite the report"),
        Command("export", "inference.export",
                "a finished run as a deployment bundle: manifest.json + one program per model"),
        Command("serve", "inference.serve",
                "HTTP server: POST /predict, GET /health, GET /info (pip install -e '.[serve]')"),
    ),
    steps=_steps,
    sections=(("inference", "inference.cli:InferenceConfig"),),
)
