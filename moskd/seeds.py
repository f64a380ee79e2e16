"""Several seeds of one experiment: RUN/seeds.json and RUN/seeds.md from each RUN/seed<k>/report.json.

Rows (DESIGN.md, "Several seeds"): every model's accuracy under its report name, routed, oracle,
gap_closed, random_same_share, cascade_same_macs and kd_gain_<student> (distilled minus its
--no-teacher baseline), plus the routed-minus differences and MACs that the claims rest on. Each
value is copied from that seed's report.json, so a row can always be traced to one report.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import yaml

from moskd.tables import markdown_table
from moskd.atomic import file_sha256
from moskd.errors import MoskdError
from moskd.run import RunDir
from moskd.atomic import write_json, write_text


def report_rows(r: dict) -> dict[str, float | None]:
    """The seed-comparable numbers of one report.json."""
    rows: dict[str, float | None] = {k: m["accuracy"] for k, m in r["models"].items() if m["accuracy"] is not None}
    rows.update({f"{k}_macs_per_image": m["macs"] for k, m in r["models"].items() if m["accuracy"] is not None})
    same = r.get("cascade_same_macs") or {}
    routed = r["routed"]["accuracy"]
    rows.update({
        "routed": routed, "oracle": r["oracle"]["accuracy"], "gap_closed": r["gap_closed"],
        "random_same_share": r["baselines"]["random_same_share"],
        "cascade_same_macs": same.get("accuracy"),
        "best_single_student": r["models"][r["best_single_student"]]["accuracy"],
        "routed_minus_best_student": routed - r["models"][r["best_single_student"]]["accuracy"],
        "routed_minus_random": routed - r["baselines"]["random_same_share"],
        "routed_minus_cascade_same_macs": routed - same["accuracy"] if same else None,
        "oracle_minus_best_student": r["oracle"]["accuracy"] - r["models"][r["best_single_student"]]["accuracy"],
        "routed_macs_per_image": r["routed"]["macs_per_image"],
        "cascade_same_macs_macs_per_image": same.get("macs_per_image"),
        "router_macs_at_teacher_accuracy": r["iso_accuracy"]["teacher"]["router"],
        "cascade_macs_at_teacher_accuracy": r["iso_accuracy"]["teacher"]["cascade"],
    })
    rows.update(policy_rows(r))
    for k, m in r["models"].items():
        base = r["models"].get(f"{k}-baseline")
        if m["role"] == "student" and base is not None and base["accuracy"] is not None:
            rows[f"kd_gain_{k}"] = m["accuracy"] - base["accuracy"]
    return rows


def policy_rows(r: dict) -> dict[str, float | None]:
    """The deployed routing policy's rows (DESIGN.md, "Routing policy") and each comparison's difference."""
    pol = r.get("policy")
    if not pol:  # a report from before the routing policy
        return {}
    under = pol.get("best_under_teacher_macs") or {}
    cmp = r.get("comparisons", {})
    rows = {"policy": pol["accuracy"], "policy_macs_per_image": pol["macs_per_image"],
            "policy_macs_share_of_teacher": pol["macs_per_image"] / r["models"]["teacher"]["macs"],
            "policy_minus_teacher": pol["minus_teacher"], "policy_minus_best_student": pol["minus_best_student"],
            "policy_best_under_teacher_macs": under.get("accuracy"),
            "policy_best_under_teacher_macs_macs_per_image": under.get("macs_per_image"),
            "policy_best_under_teacher_macs_minus_teacher": (under["accuracy"] - r["models"]["teacher"]["accuracy"]
                                                             if under else None)}
    for key in ("policy_minus_cascade_same_macs", "learned_minus_max_softmax", "hybrid_minus_cascade",
                "committee_minus_replace"):
        rows[key] = (cmp.get(key) or {}).get("difference")
    for fam, row in r.get("iso_points", {}).get("teacher", {}).items():
        rows[f"{fam}_macs_at_teacher_accuracy"] = row["macs_per_image"] if row else None
    return rows


def environment() -> dict:
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def complementary_method(run_dir: Path) -> str:
    """How the run's distilled students were trained (StudentTrain --complementary), from their
    resolved configs; "none" when they do not say (runs from before the option existed)."""
    methods = set()
    for stage in RunDir(run_dir).student_dirs():
        cfg = yaml.safe_load(stage.config.read_text()) if stage.config.is_file() else {}
        cfg = cfg or {}
        if cfg.get("alpha", 1.0) < 1.0 and not cfg.get("no_teacher"):  # distilled, not a baseline
            methods.add(cfg.get("complementary", "none"))
    return methods.pop() if len(methods) == 1 else ("mixed" if methods else "none")


def aggregate_seeds(root: Path, seeds: list[int], teacher_shared: bool, command: str = "") -> dict:
    run = RunDir(root)
    per_seed, cis = [], []
    for k in seeds:
        path = run.seed(k).report().json
        if not path.is_file():
            raise MoskdError(f"{path} not found; rerun moskd pipeline --seeds ... --run-dir {root}")
        report = json.loads(path.read_text())
        per_seed.append(report_rows(report))
        cis.append(report.get("ci95", {}))
    rows = {}
    for name in per_seed[0]:
        values = [r.get(name) for r in per_seed]
        if any(v is None for v in values):
            rows[name] = {"values": values, "mean": None, "std": None}
            continue
        arr = np.asarray(values, dtype=np.float64)
        # sample std (ddof 1): the spread a new seed would show; 0 for a single seed
        rows[name] = {"values": [float(v) for v in arr], "mean": float(arr.mean()),
                      "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}
    first = json.loads(run.seed(seeds[0]).report().json.read_text())
    teacher = run.seed(seeds[0]).teacher.best  # which teacher: methods are compared only under the same one
    out = {"seeds": list(seeds), "teacher_shared": teacher_shared, "dataset": first["dataset"],
           "teacher_sha256": file_sha256(teacher) if teacher.is_file() else None,
           "complementary": complementary_method(RunDir(root).seed(seeds[0]).root),
           "num_images": first["num_images"], "input_size": first["input_size"], "command": command,
           "environment": environment(),
           "rows": rows,
           # each seed's paired-bootstrap 95% CI on test of the differences its report bootstraps
           "ci95": {name: [c.get(name) for c in cis] for name in cis[0] if name in rows}}
    write_text(run.seeds_md, render_seeds(out))
    write_json(run.seeds_json, out)
    return out


def is_macs(name: str) -> bool:
    return name.endswith("macs_per_image") or "_macs_at_" in name


def is_difference(name: str) -> bool:
    return name.startswith("kd_gain") or "_minus_" in name


def _pct(v: float, name: str) -> str:
    return f"{100 * v:{'+' if is_difference(name) else ''}.2f}"


def _cell(name: str, row: dict) -> str:
    if row["mean"] is None:
        return "-"
    if is_macs(name):
        return f"{row['mean'] / 1e6:,.2f}M ± {row['std'] / 1e6:,.2f}M"
    if name == "gap_closed":
        return f"{row['mean']:+.3f} ± {row['std']:.3f}"
    sign = "+" if is_difference(name) else ""
    return f"{100 * row['mean']:{sign}.2f} ± {100 * row['std']:.2f}"


def render_seeds(s: dict) -> str:
    env = s["environment"]
    lines = [f"# {s['dataset']}: {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))})", "",
             f"{s['num_images']} test images, input {s['input_size']}; teacher "
             f"{'trained once and shared by every seed' if s['teacher_shared'] else 'trained per seed'}; "
             f"torch {env['torch']}, {env['threads']} threads, {env['cpu_count']} CPUs"
             f"{', ' + env['cuda'] if env.get('cuda') else ''}.", "",
             "Accuracies and differences in % (points), mean ± std over seeds (sample std); MACs per image.", ""]
    value = lambda name, v: ("-" if v is None else f"{v / 1e6:.2f}M" if is_macs(name)  # noqa: E731
                             else f"{v:.3f}" if name == "gap_closed" else f"{100 * v:.2f}")
    lines += markdown_table(["row", "mean ± std", "per seed"],
                            [(name, _cell(name, row), ", ".join(value(name, v) for v in row["values"]))
                             for name, row in s["rows"].items()], "lrl")
    if s.get("ci95"):
        ci = lambda name, v, c: ("-" if v is None or c is None  # noqa: E731
                                 else f"{_pct(v, name)} [{_pct(c[0], name)}, {_pct(c[1], name)}]")
        lines += ["", "Each seed's difference with its paired-bootstrap 95% CI on test (points; from its report.json):", ""]
        lines += markdown_table(["difference", *(f"seed {k}" for k in s["seeds"])],
                                [(name, *(ci(name, v, c) for v, c in zip(s["rows"][name]["values"], per)))
                                 for name, per in s["ci95"].items()], "l" + "r" * len(s["seeds"]))
    return "\n".join(lines) + "\n"
