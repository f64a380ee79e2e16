"""Evaluation of a run: RUN/report.json, RUN/report.md, RUN/plots/*.png and RUN/eval/<split>.npz.

    moskd report RUN [--escalate TAU] [--from-eval]     (also: inference --run-dir RUN --split test)

Every model (teacher, each routed student, baseline students) runs alone over `select` and `test`;
the routed answers on `test` come from the real Router dispatch. The per-image outputs are saved
to RUN/eval/<split>.npz, and every number of the report is computed from those arrays by
`summarize` (pure: arrays in, dict out; inference.curves does the curves and CIs), so a later
`moskd report RUN --from-eval` rebuilds the report without running a model.

Choices are made on `select`, never on `test`: the best single student, and the cascade compared
with the router at the router's MACs (its threshold: the most accurate one on `select` whose MACs
stay within the router's MACs on the selector's held-out `select` images). `test` is only scored.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inference import curves as C
from inference.report_plots import plot_accuracy_vs_macs, plot_confusions
from inference.router import TEACHER, RunModels, load_router
from moskd.data import TensorLoader, load_data
from moskd.errors import MoskdError, cli_entry
from moskd.profile import model_cost
from selector.labels import adapt_input, discover, load_student, unwrap

SELECTOR = "selector"
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
    for batch in tqdm(loader, desc=f"evaluate {desc}", leave=False, disable=not progress, unit="batch"):
        x = batch[0]
        routed = run.router(x)
        parts["routed_logits"].append(routed.logits.float().cpu())
        parts["route"].append(routed.routes.cpu())
        parts["selector_scores"].append(routed.scores.float().cpu())
        parts["labels"].append(batch[1].cpu())
        for name, m in models.items():
            parts[f"logits_{name}"].append(m(x).float().cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def save_eval(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **{k: v for k, v in arrays.items() if k != "routed_logits"})
    tmp.replace(path)


def load_eval(path: Path) -> dict:
    if not path.is_file():
        raise MoskdError(f"{path} not found; run `moskd report RUN` without --from-eval first")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def logits_of(arrays: dict) -> dict:
    return {k[len("logits_"):]: v for k, v in arrays.items() if k.startswith("logits_")}


# ---------------------------------------------------------------- the numbers


def _reduction(value: float, teacher: float) -> float | None:
    return 1.0 - value / teacher if teacher else None


def cascade_families(names: list[str]) -> list[list[str]]:
    """cheapest > each other student, each student > teacher, and the full chain > teacher."""
    fam = [[names[0], k] for k in names[1:]] + [[k, TEACHER] for k in names]
    return fam + ([[*names, TEACHER]] if len(names) > 1 else [])


def _cascade_inputs(arrays: dict, family: list[str]):
    lg = logits_of(arrays)
    return [lg[k].argmax(1) for k in family], [C.max_softmax(lg[k]) for k in family]


def router_routes(scores: np.ndarray, names: list[str], macs: dict, tie_margin: float, knob: float,
                  escalate: float | None) -> np.ndarray:
    """Routes (students 0..S-1, teacher S) as inference.router.Router assigns them."""
    m = np.array([macs[k] for k in names], dtype=np.float64)
    route = C.routes_at(scores, knob, tie_margin, m / m.max())
    if escalate is not None:
        route = np.where(scores.max(1) < escalate, len(names), route)
    return route


def model_rows(lg: dict, y: np.ndarray, costs: dict, num_classes: int) -> dict:
    """Per model: accuracy, 15-bin ECE, per-class accuracy, agreement with the teacher, confusion matrix."""
    teacher_pred = lg[TEACHER].argmax(1)
    rows = {}
    for k, cost in costs.items():
        if k not in lg:  # the selector: its "classes" are students, scored through the router
            rows[k] = {**cost, "accuracy": None, "ece": None, "per_class_accuracy": None}
            continue
        pred = lg[k].argmax(1)
        rows[k] = {**cost, "accuracy": float((pred == y).mean()), "ece": C.ece(lg[k], y),
                   "per_class_accuracy": C.per_class_accuracy(pred, y, num_classes),
                   "agreement_with_teacher": float((pred == teacher_pred).mean()),
                   "confusion": C.confusion(pred, y, num_classes).tolist()}
    return rows


def summarize(test: dict, select: dict, costs: dict, *, names: list[str], tie_margin: float, knob: float,
              escalate: float | None, heldout: list[int] | None, meta: dict) -> dict:
    """report.json's content from the per-image arrays of `test` and `select`.

    costs: name -> {role, arch, params, bytes, macs} for the teacher, the routed students (`names`,
    route order = ascending MACs), other students and the selector. test["route"] must be the
    router's routes (students 0..S-1, teacher S); select's are recomputed from its scores.
    """
    y = test["labels"]
    n = len(y)
    if n == 0:
        raise MoskdError("the evaluation split holds no images; raise --limit")
    lg = logits_of(test)
    macs = {k: float(v["macs"]) for k, v in costs.items()}
    num_classes = lg[TEACHER].shape[1]
    pred = {k: v.argmax(1) for k, v in lg.items()}
    right = {k: pred[k] == y for k in lg}
    acc = {k: float(v.mean()) for k, v in right.items()}
    route_names = [*names, TEACHER]
    correct = np.stack([right[k] for k in names], 1)  # (N, S)

    # the routed system at its operating point (test routes come from the real dispatch)
    route = test["route"].astype(np.int64)
    routed_right = np.stack([right[k] for k in route_names], 1)[np.arange(n), route]
    share = np.bincount(route, minlength=len(route_names)) / n
    routed_acc = float(routed_right.mean())
    routed_macs = macs[SELECTOR] + float(sum(share[i] * macs[k] for i, k in enumerate(route_names)))
    route_share = {k: float(share[i]) for i, k in enumerate(route_names) if k != TEACHER or escalate is not None}

    # choices on `select`: the best single student, and the cascade at the router's MACs
    sel_y, sel_lg = select["labels"], logits_of(select)
    sel_acc = {k: float((sel_lg[k].argmax(1) == sel_y).mean()) for k in names}
    best = max(names, key=lambda k: (sel_acc[k], -macs[k]))
    held = np.asarray(heldout if heldout else range(len(sel_y)), dtype=np.int64)
    sel_route = router_routes(select["selector_scores"][held], names, macs, tie_margin, knob, escalate)
    budget = macs[SELECTOR] + float(np.mean([macs[route_names[r]] for r in sel_route]))
    families = cascade_families(names)
    cascade_curves, picks = {}, []
    for fam in families:
        key = ">".join(fam)
        fmacs = [macs[k] for k in fam]
        s_preds, s_confs = _cascade_inputs(select, fam)
        thresholds = C.cascade_thresholds(s_confs[0])
        t_preds, t_confs = _cascade_inputs(test, fam)
        cascade_curves[key] = C.cascade_curve(t_preds, t_confs, fmacs, y, thresholds)
        point = C.best_under_budget(C.cascade_curve(s_preds, s_confs, fmacs, sel_y, thresholds), budget)
        if point is not None:
            picks.append((point["accuracy"], -point["macs_per_image"], key, point["threshold"], fam))
    same = None
    if picks:
        sel_accuracy, _, key, threshold, fam = max(picks)
        t_preds, t_confs = _cascade_inputs(test, fam)
        c_pred, c_cost = C.cascade_answer(t_preds, t_confs, [macs[k] for k in fam], threshold)
        c_right = c_pred == y
        same = {"cascade": key, "threshold": threshold, "select_accuracy": sel_accuracy,
                "select_budget_macs": budget, "accuracy": float(c_right.mean()),
                "macs_per_image": float(c_cost.mean())}

    oracle = float(correct.any(1).mean())
    denom = oracle - acc[best]
    random_right = sum(share[i] * right[k].astype(np.float64) for i, k in enumerate(route_names))
    conf = np.stack([C.max_softmax(lg[k]) for k in names], 1)
    confident = float(correct[np.arange(n), conf.argmax(1)].mean())
    ci95 = {"routed_minus_best_student": C.paired_bootstrap(routed_right.astype(float) - right[best]),
            "routed_minus_random": C.paired_bootstrap(routed_right - random_right),
            "routed_minus_cascade_same_macs": (C.paired_bootstrap(routed_right.astype(float) - c_right)
                                               if same else None)}

    router_curve = C.router_curve(test["selector_scores"], np.stack([pred[k] for k in names], 1), y,
                                  [macs[k] for k in names], macs[SELECTOR], tie_margin, names)
    all_cascade = [p for c in cascade_curves.values() for p in c]
    iso = {target: {"router": C.iso_accuracy(router_curve, acc_target), "cascade": C.iso_accuracy(all_cascade, acc_target)}
           for target, acc_target in (("teacher", acc[TEACHER]), ("best_student", acc[best]))}

    one = correct.sum(1) == 1
    sel_route_test = router_routes(test["selector_scores"], names, macs, tie_margin, knob, None)
    selector = {
        "exactly_one_right": int(one.sum()),
        "accuracy_on_exactly_one_right": float(correct[one, sel_route_test[one]].mean()) if one.any() else None,
        "cascade_accuracy_on_exactly_one_right": float(c_right[one].mean()) if one.any() and same else None,
        "route_share": {k: float((sel_route_test == i).mean()) for i, k in enumerate(names)},
        "macs_share_of_cheapest_student": macs[SELECTOR] / min(macs[k] for k in names),
    }

    routed_params = costs[SELECTOR]["params"] + sum(costs[k]["params"] for k in names)
    routed_bytes = costs[SELECTOR]["bytes"] + sum(costs[k]["bytes"] for k in names)
    bundle = [TEACHER, *names, SELECTOR]
    systems = {
        "routed": {"params": routed_params, "bytes": routed_bytes, "macs": routed_macs},
        # the bundle runs as the routed system (the teacher only takes escalated images)
        "bundle": {"params": sum(costs[k]["params"] for k in bundle),
                   "bytes": sum(costs[k]["bytes"] for k in bundle), "macs": routed_macs},
    }
    t = costs[TEACHER]
    compression = {
        k: {"params_reduction": _reduction(v["params"], t["params"]),
            "bytes_reduction": _reduction(v["bytes"], t["bytes"]),
            "macs_reduction": _reduction(v["macs"], t["macs"])}
        for k, v in {**costs, **systems}.items()
    }
    return {
        **meta, "num_images": n,
        "models": model_rows(lg, y, costs, num_classes),
        "routed": {"accuracy": routed_acc, "macs_per_image": routed_macs, "route_share": route_share,
                   "knob": knob, "escalate_threshold": escalate, "students": names, "tie_margin": tie_margin,
                   "params": routed_params, "bytes": routed_bytes},
        "oracle": {"accuracy": oracle},
        "baselines": {**{f"always_{k}": acc[k] for k in names},
                      # expectation over random routers sending the same shares to each route
                      "random_same_share": float(random_right.mean()),
                      "most_confident": confident},
        "best_single_student": best,
        "gap_closed": (routed_acc - acc[best]) / denom if denom > 1e-12 else None,
        "cascade_same_macs": same,
        "curves": {"router": router_curve, "cascade": cascade_curves,
                   "random": C.random_curve(correct, [macs[k] for k in names], names)},
        "iso_accuracy": iso,
        "ci95": ci95,
        "selector": selector,
        "systems": systems,
        "compression": compression,
    }


# ---------------------------------------------------------------- loading and running a run


def _data_settings(run: RunModels, dataset: str | None, data_dir: str | None, download: bool, limit: int | None):
    """The split settings the run was trained with (so `test` is the run's own test split)."""
    cfg, card = run.selector_config, run.selector_card
    if dataset is not None and dataset != card["dataset"]:
        raise MoskdError(f"the run was trained on {card['dataset']}, not {dataset}; pass --dataset {card['dataset']}")
    return dict(dataset=card["dataset"], data_dir=data_dir or cfg.get("data_dir", "data"), download=download,
                split_seed=cfg.get("split_seed", 0), select_fraction=cfg.get("select_fraction", 0.2),
                test_fraction=cfg.get("test_fraction", 0.2), limit=limit, image_size=cfg.get("image_size"),
                train_limit=cfg.get("train_limit"))


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
    RUN/eval/meta.json (under eval-limit<N>/ with --limit), and return report.json's content."""
    run_dir = Path(run_dir)
    run = load_router(run_dir, escalate, device, with_teacher=True)
    data = load_data(**_data_settings(run, dataset, data_dir, download, limit))
    names = run.router.names
    classes = len(run.class_names)
    if data.num_classes != classes:
        raise MoskdError(f"{data.name} has {data.num_classes} classes, the run's models {classes}; "
                         f"evaluate on the run's dataset")
    distilled, baselines = discover(run_dir)
    extra = [k for k in distilled + baselines if k not in names]  # baselines, unrouted students
    extras = {k: load_student(run_dir, k, dataset=data.name, num_classes=classes, device=device) for k in extra}
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
    folder = eval_dir(run_dir, limit)
    for split in SPLITS:
        save_eval(folder / f"{split}.npz", arrays[split])
    _atomic_write(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
    report = summarize(arrays["test"], arrays["select"], meta["costs"], names=names, tie_margin=meta["tie_margin"],
                       knob=meta["knob"], escalate=escalate, heldout=heldout, meta=meta["meta"])
    # the router's scattered outputs must equal each model run alone on the full batch
    test = arrays["test"]
    expect = np.stack([test[f"logits_{k}"] for k in run.router.route_names if f"logits_{k}" in test], 1)
    picked = expect[np.arange(len(test["route"])), test["route"]]
    report["routed"]["max_abs_diff_vs_single_models"] = float(np.abs(picked - test["routed_logits"]).max())
    return report


def eval_dir(run_dir: Path, limit: int | None = None) -> Path:
    """RUN/eval for the full splits; a --limit evaluation's arrays go beside it, never over it."""
    return Path(run_dir) / ("eval" if limit is None else f"eval-limit{limit}")


def report_from_eval(run_dir: str | Path, limit: int | None = None) -> dict:
    """report.json's content from the saved RUN/eval arrays, without running a model."""
    folder = eval_dir(Path(run_dir), limit)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise MoskdError(f"{meta_path} not found; run `moskd report {run_dir}` without --from-eval first")
    meta = json.loads(meta_path.read_text())
    test, select = (load_eval(folder / f"{split}.npz") for split in ("test", "select"))
    return summarize(test, select, meta["costs"], names=meta["names"], tie_margin=meta["tie_margin"],
                     knob=meta["knob"], escalate=meta["escalate"], heldout=meta["heldout"], meta=meta["meta"])


# ---------------------------------------------------------------- writing


def _fmt_int(v) -> str:
    return f"{v:,.0f}" if v is not None else "-"


def _fmt_pct(v) -> str:
    return f"{100 * v:.2f}%" if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-"


def _pt(v) -> str:
    return "-" if v is None else f"{100 * v:+.2f} pt"


def _ci(v) -> str:
    return "-" if v is None else f"[{100 * v[0]:+.2f}, {100 * v[1]:+.2f}] pt"


def _thin(points: list, rows: int = 12) -> list:
    """At most `rows` evenly spaced points, both ends kept."""
    keep = sorted({round(i * (len(points) - 1) / (rows - 1)) for i in range(rows)}) if len(points) > rows else None
    return [points[i] for i in keep] if keep else points


def render_markdown(r: dict) -> str:
    models, ro, b, sel, ci = r["models"], r["routed"], r["baselines"], r["selector"], r["ci95"]
    names, same, best = ro["students"], r.get("cascade_same_macs"), r["best_single_student"]
    student_macs = sum(models[k]["macs"] for k in names)
    acc_rows = ["| system | accuracy | MACs / image | ECE | agreement with teacher |", "|---|---:|---:|---:|---:|"]
    for k, v in models.items():
        if v["accuracy"] is not None:
            role = v["role"] + ("" if v.get("routed", True) else ", not routed")
            acc_rows.append(f"| {k} ({role}) | {_fmt_pct(v['accuracy'])} | {_fmt_int(v['macs'])} | {v['ece']:.4f} "
                            f"| {_fmt_pct(v.get('agreement_with_teacher'))} |")
    tau = ro["escalate_threshold"]
    acc_rows += [
        f"| **routed** (knob {ro['knob']:.4f}{'' if tau is None else f', escalate < {tau}'}) "
        f"| **{_fmt_pct(ro['accuracy'])}** | {_fmt_int(ro['macs_per_image'])} | | |",
        *([f"| cascade {same['cascade']} (threshold {same['threshold']:.4f}, chosen on select at the routed MACs) "
           f"| {_fmt_pct(same['accuracy'])} | {_fmt_int(same['macs_per_image'])} | | |"] if same else []),
        f"| random router, same route shares | {_fmt_pct(b['random_same_share'])} | {_fmt_int(ro['macs_per_image'])} | | |",
        f"| more-confident student (runs all students) | {_fmt_pct(b['most_confident'])} | {_fmt_int(student_macs)} | | |",
        f"| oracle (any routed student right) | {_fmt_pct(r['oracle']['accuracy'])} | - | | |",
    ]
    gap = r["gap_closed"]
    iso = r["iso_accuracy"]
    share = ", ".join(f"{k} {_fmt_pct(v)}" for k, v in ro["route_share"].items())
    evidence = [
        f"- best single student (chosen on `select`): {best}",
        f"- routed - {best}: {_pt(ro['accuracy'] - models[best]['accuracy'])}, 95% CI "
        f"{_ci(ci['routed_minus_best_student'])} (paired bootstrap over test images)",
        f"- routed - random router with the same shares: {_pt(ro['accuracy'] - b['random_same_share'])}, 95% CI "
        f"{_ci(ci['routed_minus_random'])}",
        (f"- routed - cascade {same['cascade']} at the routed MACs: {_pt(ro['accuracy'] - same['accuracy'])}, 95% CI "
         f"{_ci(ci['routed_minus_cascade_same_macs'])}" if same else "- no cascade fits within the routed MACs"),
        f"- gap closed: {'n/a (oracle equals the best student)' if gap is None else f'{gap:.3f}'} "
        "((routed - best single student) / (oracle - best single student))",
        f"- fewest MACs per image reaching the teacher's accuracy: router {_fmt_int(iso['teacher']['router'])}, "
        f"cascade {_fmt_int(iso['teacher']['cascade'])}; reaching {best}'s: router "
        f"{_fmt_int(iso['best_student']['router'])}, cascade {_fmt_int(iso['best_student']['cascade'])} (- = never)",
        f"- on the {sel['exactly_one_right']} test images exactly one student gets right: selector routes "
        f"{_fmt_pct(sel['accuracy_on_exactly_one_right'])} to the right one, the cascade answers "
        f"{_fmt_pct(sel['cascade_accuracy_on_exactly_one_right'])} right",
        f"- route share: {share}; selector cost: {_fmt_pct(sel['macs_share_of_cheapest_student'])} of the "
        "cheapest student's MACs",
    ]
    router_rows = ["| knob | accuracy | MACs / image | " + " | ".join(f"to {k}" for k in names) + " |",
                   "|---:|---:|---:|" + "---:|" * len(names)]
    router_rows += [f"| {p['knob']:.4f} | {_fmt_pct(p['accuracy'])} | {_fmt_int(p['macs_per_image'])} | "
                    + " | ".join(_fmt_pct(p["share"][k]) for k in names) + " |" for p in _thin(r["curves"]["router"])]
    cascade_rows = ["| cascade | threshold | accuracy | MACs / image |", "|---|---:|---:|---:|"]
    for key, curve in r["curves"]["cascade"].items():
        cascade_rows += [f"| {key} | {p['threshold']:.4f} | {_fmt_pct(p['accuracy'])} | {_fmt_int(p['macs_per_image'])} |"
                         for p in _thin(curve, 6)]
    classes = r.get("class_names") or [str(i) for i in range(len(next(
        v for v in models.values() if v["per_class_accuracy"])["per_class_accuracy"]))]
    per_class = ["| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    per_class += [f"| {k} | " + " | ".join(_fmt_pct(a) for a in v["per_class_accuracy"]) + " |"
                  for k, v in models.items() if v["per_class_accuracy"]]
    rows = ["| model | params | bytes | MACs / image | params red. | bytes red. | MACs red. |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    comp = r["compression"]
    for k, v in [*models.items(), *r["systems"].items()]:
        c = comp[k]
        rows.append(f"| {k} | {_fmt_int(v['params'])} | {_fmt_int(v['bytes'])} | {_fmt_int(v['macs'])} "
                    f"| {_fmt_pct(c['params_reduction'])} | {_fmt_pct(c['bytes_reduction'])} "
                    f"| {_fmt_pct(c['macs_reduction'])} |")
    return "\n".join([
        f"# moskd report: {r['dataset']} / {r['split']} ({r['num_images']} images, input {r['input_size']})", "",
        "Every number here is recomputable from `eval/test.npz` (and `eval/select.npz` for what is chosen).", "",
        "## Accuracy and compute", "", *acc_rows, "",
        "## Does routing pay?", "", *evidence, "",
        "![accuracy vs MACs](plots/accuracy_vs_macs.png)", "",
        "## Router: cost knob swept (score - knob x relative MACs)", "", *router_rows, "",
        "## Max-softmax cascades (escalate when max softmax < threshold)", "", *cascade_rows, "",
        "## Per-class accuracy", "", *per_class, "",
        "![confusion matrices](plots/confusion.png)", "",
        "## Compression (reductions against the teacher; negative = larger)", "", *rows, "",
        "MACs per image of `routed`: selector + route-weighted model MACs; its bytes: selector + students; "
        "`bundle`: every model a deployment holds.", "",
    ])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(run_dir: str | Path, report: dict) -> list[Path]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [run_dir / "report.json", run_dir / "report.md", run_dir / "plots" / "accuracy_vs_macs.png",
             run_dir / "plots" / "confusion.png"]
    _atomic_write(paths[0], json.dumps(report, indent=2) + "\n")
    _atomic_write(paths[1], render_markdown(report))
    plot_accuracy_vs_macs(report, paths[2])
    plot_confusions(report, paths[3])
    return paths


def headline(r: dict) -> str:
    ro = r["routed"]
    gap = "n/a" if r["gap_closed"] is None else f"{r['gap_closed']:.3f}"
    return (f"routed {_fmt_pct(ro['accuracy'])} at {_fmt_int(ro['macs_per_image'])} MACs/image "
            f"(teacher {_fmt_pct(r['models'][TEACHER]['accuracy'])} at {_fmt_int(r['models'][TEACHER]['macs'])}); "
            f"oracle {_fmt_pct(r['oracle']['accuracy'])}; gap closed {gap}")


def report_run(run_dir, from_eval: bool = False, **kw) -> dict:
    """Evaluate, write report.json/report.md/plots, print the tables; what the CLIs and the pipeline call."""
    report = report_from_eval(run_dir, kw.get("limit")) if from_eval else evaluate_run(run_dir, **kw)
    paths = write_report(run_dir, report)
    print(render_markdown(report))
    print(headline(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return report


@cli_entry("moskd report")
def main(argv=None):
    p = argparse.ArgumentParser(prog="moskd report", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="run directory holding teacher/, students/ and selector/")
    p.add_argument("--escalate", type=float, default=None, metavar="TAU",
                   help="send images whose best student score < TAU to the teacher (0 = never, >1 = always)")
    p.add_argument("--dataset", default=None, help="must be the run's dataset (default: read from the run)")
    p.add_argument("--data-dir", default=None, help="where fashion-mnist/CIFAR files live (default: the run's)")
    p.add_argument("--download", action="store_true", help="download fashion-mnist/CIFAR (needs network)")
    p.add_argument("--limit", type=int, default=None, help="use at most N test images")
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation step")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--from-eval", action="store_true",
                   help="rebuild the report from RUN/eval/*.npz and meta.json without running any model")
    a = p.parse_args(argv)
    from moskd.runtime import setup_runtime, show_progress

    if a.from_eval:
        report_run(a.run_dir, from_eval=True, limit=a.limit)
        return
    rt = setup_runtime(a.device)
    report_run(a.run_dir, dataset=a.dataset, data_dir=a.data_dir, download=a.download, limit=a.limit,
               escalate=a.escalate, device=rt.device, batch_size=a.batch_size, progress=show_progress(rt))


if __name__ == "__main__":
    main()
