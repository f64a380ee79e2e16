"""`moskd results`: README's results table and docs/RESULTS.md, written from committed seed files.

Every docs/results/<config>/seeds.json (copied from a `moskd pipeline --seeds ...` run directory,
with its seeds.md) becomes one section of docs/RESULTS.md and one block of README.md (between the
`<!-- results:begin -->` and `<!-- results:end -->` markers). `--check` only compares: it exits 2
when a file is not what the seed files give (tests/test_seeds.py runs it), so no number in the
README or docs can drift from the measurement it came from.

    moskd results            rewrite README.md and docs/RESULTS.md
    moskd results --check    exit 2 if either differs
    moskd results --archive RUN --name CONFIG
                             copy a `--seeds` run's result files into docs/results/CONFIG/, then rewrite

--archive copies what a multi-seed result is committed with (DESIGN.md): seeds.json and seeds.md,
each seed's report.md, policy.json, pipeline timings and eval arrays (`seed<k>-eval/`, float32 as
the run wrote them, so a refit from them reproduces the run's report exactly), the first seed's
report.json and plots, and the teacher's metrics.jsonl. Anyone can then refit and re-report a seed
without the models:

    mkdir -p R && cp -r docs/results/CONFIG/seed0-eval R/eval && moskd policy --run-dir R --from-eval
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moskd.atomic import write_bytes, write_text
from moskd.config import Parser  # one-line errors, 'did you mean', values checked by name
from moskd.errors import MoskdError, cli_entry
from moskd.run import RunDir
from moskd.tables import markdown_table

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE = [  # (row, label) shown in README's table, in this order, when present
    ("teacher", "teacher ResNet50"), ("densenet121", "DenseNet121 distilled"),
    ("densenet121-baseline", "DenseNet121 baseline (no teacher)"), ("googlenet", "GoogLeNet distilled"),
    ("googlenet-baseline", "GoogLeNet baseline (no teacher)"),
    ("policy", "**deployed routing policy** (chosen on select)"),
    ("policy_best_under_teacher_macs", "most accurate policy within the teacher's MACs (chosen on select)"),
    ("routed", "selector alone (selector + one student)"),
    ("cascade_same_macs", "best max-softmax cascade at the routed MACs"),
    ("random_same_share", "random router, same shares"), ("oracle", "oracle (any student right)"),
]
DIFFS = [("policy_minus_teacher", "deployed policy − teacher"),
         ("policy_minus_best_student", "deployed policy − best single student"),
         ("policy_minus_cascade_same_macs", "deployed policy − best max-softmax cascade at its MACs"),
         ("learned_minus_max_softmax", "learned deferral − max-softmax cascade at equal MACs"),
         ("hybrid_minus_cascade", "hybrid (selector, then deferral) − cascade at equal MACs"),
         ("committee_minus_replace", "committee − replacing answers at equal MACs"),
         ("policy_best_under_teacher_macs_minus_teacher", "best policy within the teacher's MACs − teacher"),
         ("routed_minus_best_student", "selector alone − best single student"),
         ("routed_minus_random", "selector alone − random router"),
         ("routed_minus_cascade_same_macs", "selector alone − cascade at its MACs (chosen on select)"),
         ("oracle_minus_best_student", "oracle − best single student"),
         ("kd_gain_densenet121", "KD gain DenseNet121"), ("kd_gain_googlenet", "KD gain GoogLeNet")]


def _pct(row: dict | None, signed: bool = False) -> str:
    if not row or row["mean"] is None:
        return "–"
    value = f"{100 * row['mean']:{'+' if signed else ''}.2f}"
    return value if len(row["values"]) == 1 else f"{value} ± {100 * row['std']:.2f}"  # one seed: no spread


def _macs(row: dict | None) -> str:
    if not row:
        return "–"
    if row["mean"] is None:  # reached in some seeds only: say which, invent no mean
        got = [v for v in row["values"] if v is not None]
        return (f"{', '.join(f'{v / 1e6:.1f}M' for v in got)} (reached in {len(got)} of {len(row['values'])} seeds)"
                if got else "–")
    return f"{row['mean'] / 1e6:.1f}M"


def section(config: str, s: dict) -> str:
    rows, env = s["rows"], s["environment"]
    n = len(s["seeds"])
    spread = "Mean ± std over seeds" if n > 1 else "One seed, so no spread over seeds (see the report's CIs)"
    lines = [f"### {config} ({s['dataset']}, {n} seed{'s' if n != 1 else ''}, {s['num_images']:,} test images)", "",
             f"`{s.get('command') or 'moskd pipeline'}` — torch {env['torch']}, {env['threads']} threads on "
             f"{env['cpu_count']} CPUs ({env['processor']}){', ' + env['cuda'] if env.get('cuda') else ''}; teacher "
             f"{'shared by the seeds' if s['teacher_shared'] else 'trained per seed'}. {spread} "
             f"(from [docs/results/{config}/seeds.json](docs/results/{config}/seeds.json)).", ""]
    lines += markdown_table(["model / system", "test accuracy (%)", "MACs / image"],
                            [(label, _pct(rows[key]), _macs(rows.get(f"{key}_macs_per_image")))
                             for key, label in HEADLINE if key in rows], "lrr")
    diffs = [(label, _pct(rows.get(key), signed=True)) for key, label in DIFFS if key in rows]
    gap = rows.get("gap_closed")
    if gap and gap["mean"] is not None:
        diffs.append(("gap closed (fraction)", f"{gap['mean']:+.3f}" + (f" ± {gap['std']:.3f}" if n > 1 else "")))
    lines += ["", *markdown_table(["difference", f"points{', mean ± std' if n > 1 else ''}"], diffs, "lr")]
    families = [k[: -len("_macs_at_teacher_accuracy")] for k in rows if k.endswith("_macs_at_teacher_accuracy")]
    if "policy" in rows:  # per policy family (router and cascade included): the cheapest point whose *select* accuracy reaches the teacher's
        lines += ["", "MACs per image of the cheapest point whose `select` accuracy reaches the teacher's, per "
                      "policy family (its test MACs; – = never): "
                  + ", ".join(f"{f} {_macs(rows[f + '_macs_at_teacher_accuracy'])}" for f in families) + ".", ""]
    else:
        lines += ["", f"MACs per image to reach the teacher's accuracy: router "
                      f"{_macs(rows.get('router_macs_at_teacher_accuracy'))}, cascade "
                      f"{_macs(rows.get('cascade_macs_at_teacher_accuracy'))} (– = never reached).", ""]
    return "\n".join(lines)


def load_results(root: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((root / "docs" / "results").glob("*/seeds.json")):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MoskdError(f"{path}: not valid JSON ({e}); copy it again from the run's seeds.json") from None
    return found


METHOD_COLUMNS = [("densenet121", "DenseNet121"), ("googlenet", "GoogLeNet"), ("routed", "routed"),
                  ("oracle_minus_best_student", "oracle − best"), ("routed_minus_best_student", "routed − best"),
                  ("routed_minus_cascade_same_macs", "routed − cascade (same MACs)")]


def methods_table(results: dict[str, dict]) -> str:
    """Student training methods side by side (StudentTrain --complementary), one row per committed
    config, grouped by data and teacher checkpoint (seeds.json's teacher_sha256) where a group holds
    more than one method; empty when there is nothing to compare."""
    by_data: dict[tuple, list[str]] = {}
    for name, s in results.items():
        key = (s["dataset"], s["num_images"], tuple(s["input_size"]), s.get("teacher_sha256"))
        by_data.setdefault(key, []).append(name)  # same data and the same teacher checkpoint
    groups = [names for key, names in by_data.items()  # an unnamed teacher (None) cannot show it is shared
              if key[-1] is not None and len({results[n].get("complementary", "none") for n in names}) > 1]
    if not groups:
        return ""
    lines = ["### Complementary students: methods on the same data, teacher and epochs", "",
             "Test accuracy and differences in points, mean ± std over seeds; the CIs per seed are in each "
             "config's seeds.md and report.", ""]
    header = ["config", "--complementary", *(label for _, label in METHOD_COLUMNS), "gap closed",
              "MACs at teacher acc. (router / cascade)"]
    lines += markdown_table(header, [_method_row(n, results[n]) for names in groups for n in names],
                            "ll" + "r" * (len(METHOD_COLUMNS) + 2))
    return "\n".join(lines) + "\n"


def _method_row(name: str, result: dict) -> list[str]:
    rows = result["rows"]
    signed = {k for k, _ in METHOD_COLUMNS if "minus" in k}
    gap = rows.get("gap_closed")
    gap_cell = "–" if not gap or gap["mean"] is None else f"{gap['mean']:+.3f} ± {gap['std']:.3f}"
    return [name, result.get("complementary", "none"),
            *(_pct(rows.get(k), signed=k in signed) for k, _ in METHOD_COLUMNS), gap_cell,
            f"{_macs(rows.get('router_macs_at_teacher_accuracy'))} / {_macs(rows.get('cascade_macs_at_teacher_accuracy'))}"]


def render_block(results: dict[str, dict]) -> str:
    body = "\n".join(section(k, v) for k, v in results.items()) or "_No seed results committed yet._\n"
    table = methods_table(results)
    body += ("\n" + table) if table else ""
    return f"{BEGIN}\n<!-- written by `moskd results` from docs/results/*/seeds.json; do not edit by hand -->\n\n{body}{END}"


def render_results_page(results: dict[str, dict]) -> str:
    return "\n".join(["# Results", "",
                      "Every table here is written by `moskd results` from the committed `seeds.json` files under "
                      "`docs/results/<config>/` (each copied, with its `seeds.md`, from the run directory of the "
                      "command shown). Thresholds, knobs and checkpoints were chosen on `select`; the figures are "
                      "on `test`.", "", render_block(results), ""])


def replace_block(text: str, block: str, where: str) -> str:
    if BEGIN not in text or END not in text:
        raise MoskdError(f"{where} lacks the {BEGIN} ... {END} markers; add them where the results go")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def outputs(root: Path) -> dict[Path, str]:
    results = load_results(root)
    readme = root / "README.md"
    return {readme: replace_block(readme.read_text(), render_block(results), str(readme)),
            root / "docs" / "RESULTS.md": render_results_page(results)}


def committed_copy(run, dest: Path) -> dict[Path, Path]:
    """{file of the run: its committed copy} for docs/results/<config>/ (DESIGN.md: a committed
    multi-seed result), for the seeds its seeds.json aggregates: the run's own file names (moskd.run
    owns them), seed<k>- prefixed, each
    seed's eval arrays in seed<k>-eval/ (spare only where the run has one), and the first seed's
    report.json, plots and teacher metrics."""
    seeds = json.loads(run.seeds_json.read_text())["seeds"]  # the seeds its seeds.json aggregates
    files = {run.seeds_json: dest / run.seeds_json.name, run.seeds_md: dest / run.seeds_md.name}
    for k in seeds:
        seed, rep, name = run.seed(k), run.seed(k).report(), run.seed(k).root.name
        files |= {rep.md: dest / f"{name}-{rep.md.name}", rep.policy: dest / f"{name}-{rep.policy.name}",
                  seed.pipeline_timings: dest / f"{name}-{seed.pipeline_timings.name}",
                  rep.eval_meta: dest / f"{name}-{rep.eval.name}" / rep.eval_meta.name}
        for split in ("select", "test", "spare"):
            if split != "spare" or rep.eval_arrays(split).is_file():
                files[rep.eval_arrays(split)] = dest / f"{name}-{rep.eval.name}" / rep.eval_arrays(split).name
    if seeds:
        first = run.seed(seeds[0])
        rep, name = first.report(), first.root.name
        files[rep.json] = dest / f"{name}-{rep.json.name}"
        files[first.teacher.metrics] = dest / f"{first.teacher.path.name}-{first.teacher.metrics.name}"
        for plot in ("accuracy_vs_macs", "confusion"):
            files[rep.plot(plot)] = dest / f"{name}-{rep.plot(plot).name}"
    return files


def archive_files(run: Path, dest: Path) -> dict[Path, Path]:
    """committed_copy, refused in one line when the run has no seeds.json or a seed misses a file."""
    root = RunDir(run)
    if not root.seeds_json.is_file():
        raise MoskdError(f"{root.seeds_json} not found: --archive takes a finished "
                         f"`moskd pipeline --seeds ...` run directory")
    files = committed_copy(root, dest)
    missing = [str(src) for src in files if not src.is_file()]
    if missing:
        raise MoskdError(f"{missing[0]} not found{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: "
                         f"finish the run (`moskd pipeline ... --seeds` skips what is done) before --archive")
    return files


def archive(run: Path, dest: Path) -> list[Path]:
    """Copy the run's result files into `dest` (byte for byte; each through the one writer)."""
    files = archive_files(run, dest)
    for src, dst in files.items():
        write_bytes(dst, src.read_bytes())
    return list(files.values())


@cli_entry("moskd results")
def main(argv=None):
    p = Parser(prog="moskd results", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=".", help="the repository checkout holding README.md and docs/")
    p.add_argument("--check", action="store_true", help="compare only; exit 2 if a file differs")
    p.add_argument("--archive", metavar="RUN", type=Path,
                   help="first copy this `moskd pipeline --seeds` run's result files into docs/results/NAME/")
    p.add_argument("--name", help="with --archive: the config's name under docs/results/ (e.g. fashion-mnist-cpu)")
    a = p.parse_args(argv)
    if a.archive is not None:
        if a.check or not a.name or "/" in a.name:
            raise MoskdError("--archive RUN needs --name CONFIG (a folder name under docs/results/) and no --check")
        copied = archive(a.archive, Path(a.root) / "docs" / "results" / a.name)
        print(f"copied {len(copied)} files from {a.archive} into {Path(a.root) / 'docs' / 'results' / a.name}")
    stale = []
    for path, text in outputs(Path(a.root)).items():
        if path.is_file() and path.read_text() == text:
            continue
        if a.check:
            stale.append(str(path))
        else:
            write_text(path, text)
            print(f"wrote {path}")
    if stale:
        print(f"moskd results: {', '.join(stale)} differ from docs/results/*/seeds.json; run `moskd results`",
              file=sys.stderr)
        raise SystemExit(2)  # stale files are bad input, not a failure of moskd
