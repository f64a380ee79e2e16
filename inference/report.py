"""Evaluation of a run: RUN/report.json, RUN/report.md, RUN/plots/*.png and RUN/eval/<split>.npz.

    moskd report --run-dir RUN [--escalate TAU] [--from-eval] [--limit N]
                                                        (also: inference --run-dir RUN --split test)

With --limit N (fewer test images than the run's own) everything goes to RUN/report-limit<N>/
instead, beside the full report, never over it (moskd.run.RunDir.report).

Every model (teacher, each routed student, baseline students) runs alone over `select` and `test`;
the routed answers on `test` come from the real Router dispatch. The per-image outputs are saved
to RUN/eval/<split>.npz, and every number of the report is computed from those arrays by
`summarize` (pure: arrays in, dict out; inference.curves does the curves and CIs), so a later
`moskd report --run-dir RUN --from-eval` rebuilds the report without running a model.

Choices are made on `select`, never on `test`: the best single student, and the cascade compared
with the router at the router's MACs (its threshold: the most accurate one on `select` whose MACs
stay within the router's MACs on the selector's held-out `select` images). `test` is only scored.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inference.report_markdown import headline, render_markdown
from inference.report_plots import plot_accuracy_vs_macs, plot_confusions
from inference.router import RunModels, load_router
from inference.bundle import TEACHER
from inference.summary import SELECTOR, summarize
from moskd.atomic import atomic_write, read_json, write_json, write_text
from moskd.data import load_data
from moskd.loader import TensorLoader
from moskd.config import Parser  # one-line errors, 'did you mean', values checked by name
from moskd.errors import MoskdError, cli_entry
from moskd.models import adapt_input, unwrap
from moskd.precision import policy
from moskd.profile import model_cost
from moskd.run import ReportDir, RunDir
from moskd.runtime import setup_runtime, show_progress
from moskd.config import run_dir_argument

SPLITS = ("select", "test")


# ---------------------------------------------------------------- running the models


@torch.inference_mode()
def collect(run: RunModels, extras: dict, loader: TensorLoader, progress: bool = False, desc: str = "") -> dict:
    """Per-image arrays over a split: labels, logits_<model> for every model run alone, the selector's
    scores, and the route and answer of the real Router dispatch."""
    models = {TEACHER: run.teacher, **{s.name: s.model for s in run.students}, **extras}
    for m in models.values():
        m.eval()
    parts: dict[str, list] = {k: [] for k in ("labels", "selector_scores", "routed_logits", "route",
                                              *[f"logits_{m}" for m in models])}
    prec = run.router.precision or policy(loader.device)
    for batch in tqdm(loader, desc=f"evaluate {desc}", leave=False, disable=not progress, unit="batch"):
        x = prec.input(batch[0])
        routed = run.router(x)
        parts["routed_logits"].append(routed.logits.float().cpu())
        parts["route"].append(routed.routes.cpu())
        parts["selector_scores"].append(routed.scores.float().cpu())
        parts["labels"].append(batch[1].cpu())
        for name, m in models.items():
            parts[f"logits_{name}"].append(prec.forward(m, x).cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def save_eval(path: Path, arrays: dict) -> None:
    """The arrays as .npz, through the one atomic writer."""
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: v for k, v in arrays.items() if k != "routed_logits"}))


def load_eval(path: Path) -> dict:
    if not path.is_file():
        raise MoskdError(f"{path} not found; run `moskd report --run-dir RUN` without --from-eval first")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------- loading and running a run


def _data_settings(run: RunModels, dataset: str | None, data_dir: str | None, download: bool, limit: int | None):
    """The split settings the run was trained with (so `test` is the run's own test split)."""
    cfg, card = run.selector_config, run.selector_card
    if dataset is not None and dataset != card["dataset"]:
        raise MoskdError(f"the run was trained on {card['dataset']}, not {dataset}; pass --dataset {card['dataset']}")
    return dict(dataset=card["dataset"], data_dir=data_dir or cfg.get("data_dir", "data"), download=download,
                split_seed=cfg.get("split_seed", 0), select_fraction=cfg.get("select_fraction", 0.2),
                test_fraction=cfg.get("test_fraction", 0.2), limit=limit,
                # the size the models take (older configs recorded an unused image_size: 32 for digits)
                image_size=card["input_size"][-1], train_limit=cfg.get("train_limit"))


def _costs(run: RunModels, extras: dict, names: list[str], size) -> dict:
    models = {TEACHER: (run.teacher, run.teacher_card), **{s.name: (s.model, s.card) for s in run.students},
              **{k: (s.model, s.card) for k, s in extras.items()}, SELECTOR: (run.router.selector, run.selector_card)}
    costs = {}
    for k, (m, c) in models.items():
        costs[k] = {"role": c["role"], "arch": c["arch"], **model_cost(unwrap(m), size)}
        if c["role"] == "student":
            costs[k]["routed"] = k in names
            costs[k]["distillation"] = c.get("distillation")
    return costs


def evaluate_run(run_dir: str | Path, *, dataset: str | None = None, data_dir: str | None = None,
                 download: bool = False, limit: int | None = None, escalate: float | None = None,
                 device="cpu", batch_size: int = 256, progress: bool = False) -> dict:
    """Run every model of a run over `select` and `test`, save RUN/eval/{select,test}.npz and
    RUN/eval/meta.json (under report-limit<N>/ with --limit), and return report.json's content."""
    run_dir = RunDir(run_dir)
    run_dir.require("teacher", "students", "selector")
    run = load_router(run_dir.root, escalate, device, with_teacher=True)
    data = load_data(**_data_settings(run, dataset, data_dir, download, limit))
    names = run.router.names
    classes = len(run.class_names)
    if data.num_classes != classes:
        raise MoskdError(f"{data.name} has {data.num_classes} classes, the run's models {classes}; "
                         f"evaluate on the run's dataset")
    distilled, baselines = run_dir.discover_students()
    extra = [k for k in distilled + baselines if k not in names]  # baselines, unrouted students
    extras = {k: run_dir.load_student(k, dataset=data.name, num_classes=classes, device=device) for k in extra}
    card = run.card
    for st in extras.values():
        st.model = adapt_input(st.model, st.card, card, st.path)
    size = card["input_size"]
    arrays = {}
    for split in SPLITS:
        s = data.splits[split]
        loader = TensorLoader(s.images, s.targets, mean=card["mean"], std=card["std"], batch_size=batch_size,
                              device=device)
        arrays[split] = collect(run, {k: st.model for k, st in extras.items()}, loader, progress, split)
    heldout = card.get("heldout_index") if limit is None else None  # indices into the whole `select`
    meta = {"costs": _costs(run, extras, names, size), "names": names, "tie_margin": run.router.tie_margin,
            "knob": run.router.knob, "escalate": escalate, "heldout": heldout,
            "meta": {"dataset": data.name, "split": "test", "input_size": list(size),
                     "class_names": run.class_names}}
    out = run_dir.report(limit)
    for split in SPLITS:
        save_eval(out.eval_arrays(split), arrays[split])
    write_json(out.eval_meta, meta)
    report = summarize(arrays["test"], arrays["select"], meta["costs"], names=names, tie_margin=meta["tie_margin"],
                       knob=meta["knob"], escalate=escalate, heldout=heldout, meta=meta["meta"])
    # the router's scattered outputs must equal each model run alone on the full batch
    test = arrays["test"]
    expect = np.stack([test[f"logits_{k}"] for k in run.router.route_names if f"logits_{k}" in test], 1)
    picked = expect[np.arange(len(test["route"])), test["route"]]
    report["routed"]["max_abs_diff_vs_single_models"] = float(np.abs(picked - test["routed_logits"]).max())
    return report


def eval_dir(run_dir: str | Path, limit: int | None = None) -> Path:
    """RUN/eval for the full splits; a --limit evaluation's arrays go beside it, never over it."""
    return RunDir(run_dir).report(limit).eval


def report_from_eval(run_dir: str | Path, limit: int | None = None) -> dict:
    """report.json's content from the saved RUN/eval arrays, without running a model."""
    run = RunDir(run_dir)
    run.require()  # the run directory itself must exist
    out = run.report(limit)
    if not out.eval_meta.is_file():
        raise MoskdError(f"{out.eval_meta} not found; run `moskd report --run-dir {run_dir}"
                         f"{f' --limit {limit}' if limit else ''}` without --from-eval first")
    meta = read_json(out.eval_meta)
    test, select = (load_eval(out.eval_arrays(split)) for split in ("test", "select"))
    return summarize(test, select, meta["costs"], names=meta["names"], tie_margin=meta["tie_margin"],
                     knob=meta["knob"], escalate=meta["escalate"], heldout=meta["heldout"], meta=meta["meta"])


# ---------------------------------------------------------------- writing


def write_report(out: ReportDir, report: dict) -> list[Path]:
    """report.json, report.md and the plots into `out` (RUN, or RUN/report-limit<N>)."""
    paths = [out.json, out.md, out.plot("accuracy_vs_macs"), out.plot("confusion")]
    write_json(paths[0], report)
    write_text(paths[1], render_markdown(report))
    plot_accuracy_vs_macs(report, paths[2])
    plot_confusions(report, paths[3])
    return paths


def report_run(run_dir, from_eval: bool = False, **kw) -> dict:
    """Evaluate, write report.json/report.md/plots, print the tables; what the CLIs and the pipeline call."""
    report = report_from_eval(run_dir, kw.get("limit")) if from_eval else evaluate_run(run_dir, **kw)
    paths = write_report(RunDir(run_dir).report(kw.get("limit")), report)
    print(render_markdown(report))
    print(headline(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return report


@cli_entry("moskd report")
def main(argv=None):
    p = Parser(prog="moskd report", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", nargs="?", help="the run directory, as --run-dir RUN (kept for older scripts)")
    p.add_argument("--run-dir", default=None, help="run directory holding teacher/, students/ and selector/ "
                                                   "(default: runs/digits)")
    p.add_argument("--escalate", type=float, default=None, metavar="TAU",
                   help="send images whose best student score < TAU to the teacher (0 = never, >1 = always)")
    p.add_argument("--dataset", default=None, help="must be the run's dataset (default: read from the run)")
    p.add_argument("--data-dir", default=None, help="where fashion-mnist/CIFAR files live (default: the run's)")
    p.add_argument("--download", action="store_true", help="download fashion-mnist/CIFAR (needs network)")
    p.add_argument("--limit", type=int, default=None,
                   help="use at most N test images; the report then goes to RUN/report-limit<N>/, beside the full one")
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation step")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--from-eval", action="store_true",
                   help="rebuild the report from RUN/eval/*.npz and meta.json without running any model")
    a = p.parse_args(argv)
    a.run_dir = run_dir_argument(a.run, a.run_dir, default="runs/digits")
    if a.from_eval:
        report_run(a.run_dir, from_eval=True, limit=a.limit)
        return
    rt = setup_runtime(a.device)
    report_run(a.run_dir, dataset=a.dataset, data_dir=a.data_dir, download=a.download, limit=a.limit,
               escalate=a.escalate, device=rt.device, batch_size=a.batch_size, progress=show_progress(rt))


if __name__ == "__main__":
    main()
