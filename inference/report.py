"""Evaluation of a run: RUN/report.json, RUN/report.md, RUN/plots/*.png and RUN/eval/<split>.npz.

    moskd report --run-dir RUN [--from-eval] [--limit N]     (also: inference --run-dir RUN --split test)

With --limit N (fewer test images than the run's own) everything goes to RUN/report-limit<N>/
instead, beside the full report, never over it (moskd.run.RunDir.report).

Every model (teacher, each routed student, baseline students) and the selector run alone over
`select`, `test` and, when the run has one, `spare` (at most SPARE_IMAGES of it); the per-image
outputs are saved to RUN/eval/<split>.npz. The routing policy (RUN/policy.json; fitted on
`select` by inference.policy_fit when the run has none yet, or refitted by `moskd policy`) is then
run for real on `test` through the router's sub-batch dispatch, and its answers must equal the
policy replayed on the saved arrays. Every number of the report is computed from the arrays by
`summarize` (pure: arrays in, dict out), so `moskd report --run-dir RUN --from-eval` rebuilds the
report without running a model. Choices are made on `select`, never on `test`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inference.policy_fit import Setup, fit_policy
from inference.report_markdown import headline, render_markdown
from inference.report_plots import plot_accuracy_vs_macs, plot_confusions
from inference.router import Router, RunModels, load_policy, load_router, routed_by
from inference.summary import SELECTOR, make_setup, summarize
from moskd.atomic import read_json, write_json, write_npz, write_text
from moskd.data import load_data
from moskd.loader import TensorLoader, parts_loader
from moskd.errors import MoskdError
from moskd.models import adapt_input, unwrap
from moskd.policy import TEACHER, Policy, replay
from moskd.precision import choose_precision
from moskd.profile import model_cost
from moskd.loaded import is_baseline
from moskd.teacher_import import teacher_provenance
from moskd.run import ReportDir, RunDir
from moskd.runtime import setup_runtime, show_progress

SPLITS = ("select", "test", "spare")
SPARE_IMAGES = 12_000  # enough to learn a deferral rule of a few dozen weights; the rest of spare is not read


# ---------------------------------------------------------------- running the models


@torch.inference_mode()
def collect(run: RunModels, extras: dict, loader: TensorLoader, progress: bool = False, desc: str = "") -> dict:
    """Per-image arrays over a split: labels, logits_<model> for every model run alone, and the
    selector's scores."""
    models = {TEACHER: run.teacher, **{s.name: s.model for s in run.students}, **extras}
    for m in models.values():
        m.eval()
    parts: dict[str, list] = {k: [] for k in ("labels", "selector_scores", *[f"logits_{m}" for m in models])}
    prec = run.router.precision or choose_precision(loader.device)
    selector = run.router.selector_module
    for batch in tqdm(loader, desc=f"evaluate {desc}", leave=False, disable=not progress, unit="batch"):
        x = prec.input(batch[0])
        parts["selector_scores"].append(prec.forward(selector, x).float().sigmoid().cpu())
        parts["labels"].append(batch[1].cpu())
        for name, m in models.items():
            parts[f"logits_{name}"].append(prec.forward(m, x).cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


@torch.inference_mode()
def dispatch(router: Router, loader: TensorLoader, progress: bool = False) -> dict:
    """The policy run for real: the router's sub-batch dispatch over a split."""
    parts: dict[str, list] = {"pred": [], "route": [], "models": [], "macs": []}
    for batch in tqdm(loader, desc="dispatch test", leave=False, disable=not progress, unit="batch"):
        out = router(batch[0])
        parts["pred"].append(out.logits.argmax(1).cpu())
        parts["route"].append(out.routes.cpu())
        parts["models"].append(out.models.cpu())
        parts["macs"].append(out.macs.cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def with_policy(arrays: dict, policy: Policy) -> dict:
    """The arrays with the deployed policy's answer per image (DESIGN.md: policy_pred, policy_macs,
    policy_models; route = the model that answered last)."""
    d = replay(policy, arrays)
    return {**arrays, "policy_pred": d.pred.astype(np.int64), "policy_macs": d.macs,
            "policy_models": d.models, "route": d.route}


def save_eval(path: Path, arrays: dict) -> None:
    write_npz(path, arrays)


def load_eval(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if not required:
            return None
        raise MoskdError(f"{path} not found; run `moskd report --run-dir RUN` without --from-eval first")
    with np.load(path, allow_pickle=False) as f:
        return {k: (f[k].astype(np.float32) if k.startswith("logits_") else f[k]) for k in f.files}


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
              **{k: (s.model, s.card) for k, s in extras.items()}, SELECTOR: (run.router.selector_module, run.selector_card)}
    costs = {}
    for k, (m, c) in models.items():
        costs[k] = {"role": c["role"], "arch": c["arch"], **model_cost(unwrap(m), size)}
        if c["role"] == "student":
            costs[k]["routed"] = k in names
            costs[k]["distillation"] = c.get("distillation")
    return costs


def _loader(data, split: str, card: dict, batch_size: int, device, cap: int | None = None) -> TensorLoader:
    idx = None if cap is None else torch.arange(min(cap, len(data.splits[split])))
    return parts_loader(data, [(split, idx)], mean=card["mean"], std=card["std"], batch_size=batch_size, device=device)


def evaluate_run(run_dir: str | Path, *, dataset: str | None = None, data_dir: str | None = None,
                 download: bool = False, limit: int | None = None, device="cpu", batch_size: int = 256,
                 progress: bool = False, refit: bool = False, target: str = "teacher",
                 budget_macs: float | None = None) -> dict:
    """Run every model of a run over `select`, `test` (and `spare`), save RUN/eval/<split>.npz and
    RUN/eval/meta.json (under report-limit<N>/ with --limit), fit the routing policy when the run has
    none (or `refit`), run it for real on `test`, and return report.json's content."""
    run_dir = RunDir(run_dir)
    run_dir.require("teacher", "students", "selector")
    policy = None if refit else load_policy(run_dir, limit)
    run = load_router(run_dir.root, device, with_teacher=True, policy=policy)  # every checkpoint, read once
    data = load_data(**_data_settings(run, dataset, data_dir, download, limit))
    names = run.router.names
    classes = len(run.class_names)
    if data.num_classes != classes:
        raise MoskdError(f"{data.name} has {data.num_classes} classes, the run's models {classes}; "
                         f"evaluate on the run's dataset")
    card = run.card
    extras = {}  # baselines and unrouted students, each read once (the routed ones came with the router)
    for d in run_dir.student_dirs():
        if d.path.name not in names:
            st = run_dir.load_student(d.path.name, dataset=data.name, num_classes=classes, device=device)
            st.model = adapt_input(st.model, st.card, card, st.path)
            extras[d.path.name] = st
    extras = dict(sorted(extras.items(), key=lambda kv: (is_baseline(kv[0], kv[1].card), kv[0])))  # distilled first
    arrays = {}
    for split in SPLITS:
        if split in data.splits:
            loader = _loader(data, split, card, batch_size, device, SPARE_IMAGES if split == "spare" else None)
            arrays[split] = collect(run, {k: st.model for k, st in extras.items()}, loader, progress, split)
    heldout = card.get("heldout_index") if limit is None else None  # indices into the whole `select`
    meta = {"costs": _costs(run, extras, names, card["input_size"]), "names": names,
            "tie_margin": run.router.policy.entry.get("tie_margin", float(card.get("tie_margin", 0.0))),
            "knob": float(card.get("knob", 0.0)), "heldout": heldout,
            "meta": {"dataset": data.name, "split": "test", "input_size": list(card["input_size"]),
                     "class_names": run.class_names,
                     **teacher_provenance(run.teacher_card, run_dir.teacher.best)}}  # issue 28: whose teacher
    out = run_dir.report(limit)
    scored = None
    if policy is None:
        policy, scored = policy_step(out, meta, arrays, target, budget_macs, said=refit)
        run = routed_by(run, policy)  # the same models, routed by the policy just fitted
    real = dispatch(run.router, _loader(data, "test", card, batch_size, device), progress)
    for split, a in arrays.items():
        arrays[split] = with_policy(a, policy)
        save_eval(out.eval_arrays(split), arrays[split])
    write_json(out.eval_meta, meta)
    report = summarize_meta(arrays, meta, policy, scored)
    test = arrays["test"]
    report["policy"]["dispatch_matches_replay"] = {
        "labels": float((real["pred"] == test["policy_pred"]).mean()),
        "routes": float((real["route"] == test["route"]).mean()),
        "models": float((real["models"] == test["policy_models"]).mean())}
    return report


def setup_of(meta: dict) -> Setup:
    return make_setup(meta["names"], meta["costs"], meta["tie_margin"], meta["knob"])


def policy_step(out: ReportDir, meta: dict, arrays: dict, target: str = "teacher",
                budget_macs: float | None = None, said: bool = False) -> tuple[Policy, list]:
    """`moskd policy`'s work: fit the routing policy on the arrays' `select` (and `spare`) and write
    RUN/policy.json. A report that finds no policy calls it and says so in one line (said=False);
    `moskd policy` asked for it (said=True)."""
    if not said:
        print(f"no routing policy in {out.policy.parent} yet: fitting one on select, as `moskd policy` does "
              f"-> {out.policy}", flush=True)
    policy, scored = fit_policy(setup_of(meta), arrays["select"], meta["heldout"], arrays.get("spare"), target,
                                budget_macs)
    write_json(out.policy, policy.to_dict())
    return policy, scored  # every candidate scored on select: the summary reuses them


def summarize_meta(arrays: dict, meta: dict, policy: Policy, scored: list | None = None) -> dict:
    return summarize(arrays["test"], arrays["select"], meta["costs"], names=meta["names"],
                     tie_margin=meta["tie_margin"], knob=meta["knob"], heldout=meta["heldout"], meta=meta["meta"],
                     policy=policy, spare=arrays.get("spare"), scored=scored)


def eval_dir(run_dir: str | Path, limit: int | None = None) -> Path:
    """RUN/eval for the full splits; a --limit evaluation's arrays go beside it, never over it."""
    return RunDir(run_dir).report(limit).eval


def load_saved(run_dir: str | Path, limit: int | None = None) -> tuple[ReportDir, dict, dict]:
    """(report folder, eval meta, per-split arrays) of a finished evaluation."""
    run = RunDir(run_dir)
    run.require()  # the run directory itself must exist
    out = run.report(limit)
    if not out.eval_meta.is_file():
        raise MoskdError(f"{out.eval_meta} not found; run `moskd report --run-dir {run_dir}"
                         f"{f' --limit {limit}' if limit else ''}` without --from-eval first")
    meta = read_json(out.eval_meta)
    arrays = {split: load_eval(out.eval_arrays(split), required=split != "spare") for split in SPLITS}
    return out, meta, {k: v for k, v in arrays.items() if v is not None}


def report_from_eval(run_dir: str | Path, limit: int | None = None, refit: bool = False, target: str = "teacher",
                     budget_macs: float | None = None) -> dict:
    """report.json's content from the saved RUN/eval arrays, without running a model (the policy is
    refitted from them when asked, or when the run has none)."""
    out, meta, arrays = load_saved(run_dir, limit)
    policy, scored = None if refit else load_policy(RunDir(run_dir), limit), None
    if policy is None:
        policy, scored = policy_step(out, meta, arrays, target, budget_macs, said=refit)
    for split, a in arrays.items():
        arrays[split] = with_policy(a, policy)
        if refit:
            save_eval(out.eval_arrays(split), arrays[split])
    return summarize_meta(arrays, meta, policy, scored)


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
    if from_eval:
        report = report_from_eval(run_dir, kw.get("limit"), kw.get("refit", False), kw.get("target", "teacher"),
                                  kw.get("budget_macs"))
    else:
        report = evaluate_run(run_dir, **kw)
    paths = write_report(RunDir(run_dir).report(kw.get("limit")), report)
    if kw.get("refit"):
        print(f"policy: {report['policy']['description']} -> {RunDir(run_dir).report(kw.get('limit')).policy}")
    print(render_markdown(report))
    print(headline(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return report


def evaluate_command(cfg) -> int:
    """`inference --split test` once its flags are parsed and checked (inference.cli.main; cfg: an
    InferenceConfig): the run's report, as `moskd report` writes it."""
    rt = setup_runtime(cfg.device)
    report_run(cfg.run_dir, dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, limit=cfg.limit,
               device=rt.device, batch_size=cfg.batch_size, progress=show_progress(rt))
    return 0


def report_command(cfg, refit: bool) -> None:
    """`moskd report` / `moskd policy` once their flags are parsed (inference.cli): cfg is a
    ReportConfig or PolicyConfig (inference.config)."""
    if cfg.target not in ("teacher", "best-student"):
        try:
            ok = 0 < float(cfg.target) <= 1
        except ValueError:
            ok = False
        if not ok:
            raise MoskdError(f"--target {cfg.target}: choose teacher, best-student or an accuracy in (0, 1]")
    fit = {"refit": refit, "target": cfg.target, "budget_macs": cfg.budget_macs}
    if cfg.from_eval:
        report_run(cfg.run_dir, from_eval=True, limit=cfg.limit, **fit)
        return
    rt = setup_runtime(cfg.device)
    report_run(cfg.run_dir, dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, limit=cfg.limit,
               device=rt.device, batch_size=cfg.batch_size, progress=show_progress(rt), **fit)
