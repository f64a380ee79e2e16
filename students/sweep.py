"""The work of `moskd sweep` (its flags and what it writes: students.cli.SWEEP_DOC)."""
from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from dataclasses import dataclass
from pathlib import Path

from moskd.checkpoint import load_checkpoint
from moskd.data import data_from_config
from moskd.engine import drop_last, evaluate, top1
from moskd.loader import make_loader
from moskd.models import build_model_from_checkpoint
from moskd.run import RunDir, StageDir
from moskd.runtime import Runtime, log
from moskd.atomic import read_json, write_json, write_text
from moskd.tables import markdown_table
from students.config import StudentConfig, SweepConfig
from students.train import check_config, resolve_arch, run as train_student


@dataclass(frozen=True)
class Point:
    name: str  # folder under RUN/sweep/ without the seed
    temperature: float | None
    alpha: float

    def config(self, cfg: SweepConfig, seed: int) -> StudentConfig:
        base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(StudentConfig)}
        # resume is decided per run (an interrupted run resumes, a finished one is reused)
        base.update(seed=seed, alpha=self.alpha, no_teacher=self.alpha >= 1.0, resume=False)
        if self.temperature is not None:
            base["temperature"] = self.temperature
        return StudentConfig(**base)


def grid(cfg: SweepConfig, arch: str) -> list[Point]:
    """Distinct grid points in order; alpha = 1 is the baseline, MSE has no temperature."""
    points: list[Point] = []
    temps = cfg.temperatures if cfg.kd_loss == "kl" else [None]
    for alpha in cfg.alphas:
        for t in temps:
            if alpha >= 1.0:
                p = Point(f"{arch}-baseline", None, 1.0)
            elif t is None:
                p = Point(f"{arch}-mse-a{alpha:g}", None, alpha)
            else:
                p = Point(f"{arch}-T{t:g}-a{alpha:g}", t, alpha)
            if p not in points:
                points.append(p)
    if cfg.baseline and Point(f"{arch}-baseline", None, 1.0) not in points:
        points.append(Point(f"{arch}-baseline", None, 1.0))
    return points


def last_epoch_accuracy(run: StageDir, data, cfg: StudentConfig, rt: Runtime) -> float:
    """Test accuracy of last.pt (the weights after the final epoch), beside best-on-select."""

    model = build_model_from_checkpoint(load_checkpoint(run.last, role="student")).to(rt.device)
    return evaluate(model, make_loader(data, "test", cfg.eval_batch_size, device=rt.device), top1,
                    Runtime(rt.device), cfg.amp)


def train_point(point: Point, seed: int, cfg: SweepConfig, data, rt: Runtime) -> dict:
    """Train (or reuse, or resume) one run; returns its row of <arch>-runs.csv."""

    out = RunDir(cfg.run_dir).sweep_run(f"{point.name}-s{seed}")
    if out.finished and not cfg.force:
        summary = read_json(out.summary)
        log(rt, f"sweep: {out.path.name} already finished; reusing it (--force retrains)")
    else:
        # last.pt stays until the last epoch's test accuracy is in summary.json; --keep-last no drops it then
        scfg = dataclasses.replace(point.config(cfg, seed), keep_last="yes")
        if not cfg.force and out.last.is_file():
            scfg = dataclasses.replace(scfg, resume=True)
        summary = train_student(scfg, rt, out_dir=out.path, data=data)
    if "test_acc_last" not in summary:
        summary["test_acc_last"] = last_epoch_accuracy(out, data, cfg, rt)
        if rt.is_main:
            write_json(out.summary, summary)
    if cfg.keep_last == "no" and rt.is_main:
        drop_last(out.path)
    return {"name": point.name, "kd_loss": cfg.kd_loss if point.alpha < 1 else "none",
            "temperature": point.temperature, "alpha": point.alpha, "seed": seed,
            "best_epoch": summary["best_epoch"], "select_acc": summary["best_select"],
            "test_acc_best": summary["test_acc"], "test_acc_last": summary["test_acc_last"]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per grid point: mean and standard deviation (n - 1) over its seeds."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        agg = {k: group[0][k] for k in ("name", "kd_loss", "temperature", "alpha")}
        agg["seeds"] = len(group)
        for metric in ("select_acc", "test_acc_best", "test_acc_last"):
            agg[f"{metric}_mean"], agg[f"{metric}_std"] = _mean_std([r[metric] for r in group])
        out.append(agg)
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def markdown(table: list[dict], arch: str) -> str:
    pct = lambda r, m: f"{100 * r[m + '_mean']:.2f} ± {100 * r[m + '_std']:.2f}"  # noqa: E731
    lines = [
        f"# Distillation sweep: {arch}", "",
        "Accuracy in % (mean ± std over seeds). `select`: the chosen epoch's accuracy on the select split; "
        "test @best: that checkpoint on `test`; test @last: the last epoch's weights on `test`.", "",
    ]
    lines += markdown_table(["run", "loss", "T", "alpha", "seeds", "select", "test @best", "test @last"],
                            [(r["name"], r["kd_loss"], "–" if r["temperature"] is None else f"{r['temperature']:g}",
                              f"{r['alpha']:g}", r["seeds"], pct(r, "select_acc"), pct(r, "test_acc_best"),
                              pct(r, "test_acc_last")) for r in table])
    return "\n".join(lines) + "\n"


def sweep(cfg: SweepConfig, rt: Runtime) -> list[dict]:

    check_config(cfg)
    arch = resolve_arch(cfg.model)
    data = data_from_config(cfg)  # loaded once, shared by every run
    points = grid(cfg, arch)
    for p in points:  # every grid value is checked before the first run starts
        check_config(p.config(cfg, cfg.seeds[0]))
    jobs = [(p, s) for p in points for s in cfg.seeds]
    rows = []
    for i, (point, seed) in enumerate(jobs, 1):
        log(rt, f"sweep {i}/{len(jobs)}: {point.name} seed {seed}")
        rows.append(train_point(point, seed, cfg, data, rt))
    table = aggregate(rows)
    if rt.is_main:
        run = RunDir(cfg.run_dir)
        write_csv(rows, run.sweep_table(arch, "runs", "csv"))
        write_csv(table, run.sweep_table(arch, "results", "csv"))
        write_text(run.sweep_table(arch, "results", "md"), markdown(table, arch))
        log(rt, markdown(table, arch))
        log(rt, f"sweep: {len(jobs)} runs -> {run.sweep_table(arch, 'results', 'md')}, "
                f"{run.sweep_table(arch, 'results', 'csv')}")
    return table
