"""Evaluation of a run on `test`: RUN/report.json, RUN/report.md and RUN/plots/*.png.

    moskd report RUN [--escalate TAU]        (also: inference --run-dir RUN --split test)

Every model is scored alone on the whole split (teacher, each routed student, baseline students);
the routed accuracy comes from the real Router dispatch. From those per-image outputs come the
oracle (any routed student right), the baselines (always one student, a random router with the
same route shares, the more-confident student), gap closed, route shares, the selector's accuracy
on images exactly one student gets right, and the cascade curve as TAU sweeps 0..1. Compression is
computed: parameters, bytes of saved weights and MACs per image (moskd.profile) for every model,
the routed system and the whole bundle, each as a reduction against the teacher.

The pipeline calls `evaluate_run` and `write_report`; `summarize` is pure (tensors in, dict out).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from inference.router import TEACHER, RunModels, load_router
from moskd.data import TensorLoader, load_data
from moskd.errors import MoskdError, cli_entry
from moskd.profile import model_cost
from selector.labels import adapt_input, discover, load_student, unwrap
from selector.model import route_from_scores

TAUS = [round(i / 20, 2) for i in range(21)]  # cascade thresholds swept for the curve (plus score quantiles)
SELECTOR = "selector"


@dataclass
class Outputs:
    """Per-image outputs on one split."""
    targets: torch.Tensor  # (N,)
    scores: torch.Tensor  # (N, S) selector scores, routed students in route order
    logits: dict  # name -> (N, C): every model run alone over the whole split
    routed_logits: torch.Tensor  # (N, C) from Router dispatch
    routes: torch.Tensor  # (N,) index into students + [teacher]


# ---------------------------------------------------------------- running the models


@torch.inference_mode()
def collect(run: RunModels, extras: dict, loader: TensorLoader, progress: bool = False) -> Outputs:
    models = {TEACHER: run.teacher, **{s.name: s.model for s in run.students}, **extras}
    for m in models.values():
        m.eval()
    parts: dict[str, list] = {k: [] for k in ("targets", "scores", "routed", "routes", *models)}
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress, unit="batch"):
        x = batch[0]
        routed = run.router(x)
        parts["routed"].append(routed.logits.float().cpu())
        parts["routes"].append(routed.routes.cpu())
        parts["scores"].append(routed.scores.cpu())
        parts["targets"].append(batch[1].cpu())
        for name, m in models.items():
            parts[name].append(m(x).float().cpu())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return Outputs(cat["targets"], cat["scores"], {k: cat[k] for k in models}, cat["routed"], cat["routes"])


# ---------------------------------------------------------------- the numbers


def _acc(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(1) == targets).float().mean().item()


def _reduction(value: float, teacher: float) -> float | None:
    return 1.0 - value / teacher if teacher else None


def cascade_taus(best: torch.Tensor) -> list[float]:
    """The 0..1 grid plus the 5%..95% quantiles of the images' best scores: selector scores often
    crowd near 1, where a plain grid would jump from no escalation to almost all."""
    qs = torch.quantile(best.double(), torch.linspace(0.05, 0.95, 19, dtype=torch.float64)).tolist()
    return sorted(set(TAUS) | {q for q in qs if 0 < q < 1})


def cascade_curve(out: Outputs, names: list[str], macs: dict, tie_margin: float, taus=None) -> list[dict]:
    """Accuracy and MACs per image as the escalation threshold sweeps: unsure images go to the teacher."""
    route = route_from_scores(out.scores, tie_margin)
    preds = torch.stack([out.logits[n].argmax(1) for n in names], 1).gather(1, route[:, None]).squeeze(1)
    student_macs = torch.tensor([macs[n] for n in names], dtype=torch.float64)[route]
    best = out.scores.max(1).values
    taus = cascade_taus(best) if taus is None else taus
    curve = []
    for tau in taus:
        esc = best < tau
        pred = torch.where(esc, out.logits[TEACHER].argmax(1), preds)
        cost = torch.where(esc, torch.tensor(float(macs[TEACHER]), dtype=torch.float64), student_macs)
        curve.append({"tau": tau, "accuracy": (pred == out.targets).float().mean().item(),
                      "macs_per_image": macs[SELECTOR] + cost.mean().item(),
                      "teacher_share": esc.float().mean().item()})
    return curve


def summarize(out: Outputs, names: list[str], models: dict, *, escalate: float | None, tie_margin: float,
              meta: dict) -> dict:
    """report.json's content. models: name -> {role, arch, params, bytes, macs} for the teacher,
    the routed students (`names`, route order), extra students and the selector."""
    n, y = len(out.targets), out.targets
    if n == 0:
        raise MoskdError("the evaluation split holds no images; raise --limit")
    macs = {k: v["macs"] for k, v in models.items()}
    acc = {k: _acc(out.logits[k], y) for k in out.logits}
    correct = torch.stack([out.logits[k].argmax(1) == y for k in names], 1)  # (N, S)

    route_names = names + [TEACHER]
    share = torch.bincount(out.routes, minlength=len(route_names)).double() / n
    route_share = {k: share[i].item() for i, k in enumerate(route_names) if k != TEACHER or escalate is not None}
    routed_acc = _acc(out.routed_logits, y)
    routed_macs = macs[SELECTOR] + sum(share[i].item() * macs[k] for i, k in enumerate(route_names))

    oracle = correct.any(1).float().mean().item()
    best_name = max(names, key=lambda k: acc[k])
    denom = oracle - acc[best_name]
    probs = torch.stack([out.logits[k].softmax(1).max(1).values for k in names], 1)
    confident = correct.gather(1, probs.argmax(1, keepdim=True)).float().mean().item()
    sel_route = route_from_scores(out.scores, tie_margin)  # the selector's own choice, before any cascade
    one = correct.sum(1) == 1
    sel_on_one = correct[one].gather(1, sel_route[one][:, None]).float().mean().item() if one.any() else None

    routed_params = models[SELECTOR]["params"] + sum(models[k]["params"] for k in names)
    routed_bytes = models[SELECTOR]["bytes"] + sum(models[k]["bytes"] for k in names)
    bundle = [TEACHER, *names, SELECTOR]
    systems = {
        "routed": {"params": routed_params, "bytes": routed_bytes, "macs": routed_macs},
        # the bundle runs as the routed system (the teacher only takes escalated images)
        "bundle": {"params": sum(models[k]["params"] for k in bundle),
                   "bytes": sum(models[k]["bytes"] for k in bundle), "macs": routed_macs},
    }
    t = models[TEACHER]
    compression = {
        k: {"params_reduction": _reduction(v["params"], t["params"]),
            "bytes_reduction": _reduction(v["bytes"], t["bytes"]),
            "macs_reduction": _reduction(v["macs"], t["macs"])}
        for k, v in {**models, **systems}.items()
    }
    return {
        **meta, "num_images": n,
        "models": {k: {**v, "accuracy": acc.get(k)} for k, v in models.items()},
        "routed": {"accuracy": routed_acc, "macs_per_image": routed_macs, "route_share": route_share,
                   "escalate_threshold": escalate, "students": names, "tie_margin": tie_margin,
                   "params": routed_params, "bytes": routed_bytes},
        "oracle": {"accuracy": oracle},
        "baselines": {**{f"always_{k}": acc[k] for k in names},
                      # expectation over random routers sending the same shares to each route
                      "random_same_share": sum(share[i].item() * acc[k] for i, k in enumerate(route_names)),
                      "most_confident": confident},
        "best_single_student": best_name,
        "gap_closed": (routed_acc - acc[best_name]) / denom if denom > 1e-12 else None,
        "selector": {"exactly_one_right": int(one.sum()), "accuracy_on_exactly_one_right": sel_on_one,
                     "route_share": {k: (sel_route == i).float().mean().item() for i, k in enumerate(names)},
                     "macs_share_of_cheapest_student": macs[SELECTOR] / min(macs[k] for k in names)},
        "systems": systems,
        "compression": compression,
        "cascade": cascade_curve(out, names, macs, tie_margin),
    }


# ---------------------------------------------------------------- loading and running a run


def _data_settings(run: RunModels, dataset: str | None, data_dir: str | None, download: bool, limit: int | None):
    """The split settings the run was trained with (so `test` is the run's own test split)."""
    cfg, card = run.selector_config, run.selector_card
    if dataset is not None and dataset != card["dataset"]:
        raise MoskdError(f"the run was trained on {card['dataset']}, not {dataset}; pass --dataset {card['dataset']}")
    return dict(dataset=card["dataset"], data_dir=data_dir or cfg.get("data_dir", "data"), download=download,
                split_seed=cfg.get("split_seed", 0), select_fraction=cfg.get("select_fraction", 0.2),
                test_fraction=cfg.get("test_fraction", 0.2), limit=limit, image_size=cfg.get("image_size", 32))


def evaluate_run(run_dir: str | Path, *, dataset: str | None = None, data_dir: str | None = None,
                 download: bool = False, limit: int | None = None, escalate: float | None = None,
                 device="cpu", batch_size: int = 256, progress: bool = False) -> dict:
    """Score every model of a run on its `test` split; returns report.json's content."""
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
    for s in extras.values():
        s.model = adapt_input(s.model, s.card, card, s.path)
    size = card["input_size"]
    models = {TEACHER: (run.teacher, run.teacher_card), **{s.name: (s.model, s.card) for s in run.students},
              **{k: (s.model, s.card) for k, s in extras.items()}, SELECTOR: (run.router.selector, run.selector_card)}
    costs = {}
    for k, (m, c) in models.items():
        costs[k] = {"role": c["role"], "arch": c["arch"], **model_cost(unwrap(m), size)}
        if c["role"] == "student":
            costs[k]["routed"] = k in names
            costs[k]["distillation"] = c.get("distillation")
    s = data.splits["test"]
    loader = TensorLoader(s.images, s.targets, mean=card["mean"], std=card["std"], batch_size=batch_size,
                          device=device)
    out = collect(run, {k: st.model for k, st in extras.items()}, loader, progress)
    meta = {"dataset": data.name, "split": "test", "input_size": list(size), "class_names": run.class_names}
    report = summarize(out, names, costs, escalate=escalate, tie_margin=run.router.tie_margin, meta=meta)
    # the router's scattered outputs must equal each student run alone on the full batch
    expect = torch.stack([out.logits[k] for k in run.router.route_names if k in out.logits], 1)
    picked = expect.gather(1, out.routes[:, None, None].expand(-1, 1, expect.shape[2])).squeeze(1)
    report["routed"]["max_abs_diff_vs_single_models"] = (picked - out.routed_logits).abs().max().item()
    return report


# ---------------------------------------------------------------- writing


def _fmt_int(v) -> str:
    return f"{v:,.0f}" if v is not None else "-"


def _fmt_pct(v) -> str:
    return f"{100 * v:.2f}%" if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-"


def render_markdown(r: dict) -> str:
    rows = ["| model | role | accuracy | params | bytes | MACs / image | params red. | bytes red. | MACs red. |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    comp = r["compression"]
    for k, v in r["models"].items():
        c = comp[k]
        role = v["role"] + ("" if v.get("routed", True) else " (not routed)")
        rows.append(f"| {k} | {role} | {_fmt_pct(v['accuracy'])} | {_fmt_int(v['params'])} | {_fmt_int(v['bytes'])} "
                    f"| {_fmt_int(v['macs'])} | {_fmt_pct(c['params_reduction'])} | {_fmt_pct(c['bytes_reduction'])} "
                    f"| {_fmt_pct(c['macs_reduction'])} |")
    for k, v in r["systems"].items():
        c = comp[k]
        what = {"routed": "selector + routed students", "bundle": "teacher + students + selector"}[k]
        acc = r["routed"]["accuracy"]
        rows.append(f"| **{k}** | {what} | {_fmt_pct(acc)} | {_fmt_int(v['params'])} | {_fmt_int(v['bytes'])} "
                    f"| {_fmt_int(v['macs'])} | {_fmt_pct(c['params_reduction'])} | {_fmt_pct(c['bytes_reduction'])} "
                    f"| {_fmt_pct(c['macs_reduction'])} |")
    ro, b, sel = r["routed"], r["baselines"], r["selector"]
    tau = ro["escalate_threshold"]
    acc_rows = ["| system | accuracy |", "|---|---:|",
                f"| routed{'' if tau is None else f' (cascade, tau = {tau})'} | {_fmt_pct(ro['accuracy'])} |",
                f"| oracle (any routed student right) | {_fmt_pct(r['oracle']['accuracy'])} |"]
    acc_rows += [f"| {k} | {_fmt_pct(v)} |" for k, v in b.items()]
    gap = r["gap_closed"]
    cascade = ["| tau | accuracy | MACs / image | to teacher |", "|---:|---:|---:|---:|"]
    points = list({round(p["teacher_share"], 2): p for p in reversed(r["cascade"])}.values())[::-1]
    keep = sorted({round(i * (len(points) - 1) / 11) for i in range(12)})  # at most 12 rows, both ends kept
    points = [points[i] for i in keep]
    cascade += [f"| {p['tau']:.4f} | {_fmt_pct(p['accuracy'])} | {_fmt_int(p['macs_per_image'])} "
                f"| {_fmt_pct(p['teacher_share'])} |" for p in points]
    share = ", ".join(f"{k} {_fmt_pct(v)}" for k, v in ro["route_share"].items())
    return "\n".join([
        f"# moskd report: {r['dataset']} / {r['split']} ({r['num_images']} images, input {r['input_size']})", "",
        "## Accuracy", "", *acc_rows, "",
        f"- gap closed: {'n/a (oracle equals the best student)' if gap is None else f'{gap:.3f}'} "
        f"(routed - best single student {r['best_single_student']}) / (oracle - best single student)",
        f"- route share: {share}",
        f"- selector on the {sel['exactly_one_right']} images exactly one student gets right: "
        f"{_fmt_pct(sel['accuracy_on_exactly_one_right'])} routed to the right one",
        f"- selector cost: {_fmt_pct(sel['macs_share_of_cheapest_student'])} of the cheapest student's MACs", "",
        "## Compression (reductions against the teacher; negative = larger)", "", *rows, "",
        "MACs per image of `routed`: selector + route-weighted student MACs; its bytes: selector + students.", "",
        "## Cascade (images whose best student score < tau go to the teacher)", "", *cascade, "",
        "![accuracy vs MACs](plots/accuracy_vs_macs.png)", "",
    ])


def plot_accuracy_vs_macs(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, v in r["models"].items():
        if v["accuracy"] is None:
            continue
        ax.scatter(v["macs"], v["accuracy"], marker="s" if v["role"] == "teacher" else "o", zorder=3)
        ax.annotate(k, (v["macs"], v["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    curve = r["cascade"]
    ax.plot([p["macs_per_image"] for p in curve], [p["accuracy"] for p in curve], "-", color="tab:gray",
            marker=".", label="cascade (tau 0..1)", zorder=2)
    ax.scatter(r["routed"]["macs_per_image"], r["routed"]["accuracy"], marker="*", s=180, color="tab:red",
               label="routed", zorder=4)
    ax.axhline(r["oracle"]["accuracy"], linestyle="--", color="tab:green", label="oracle (any student right)")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image")
    ax.set_ylabel(f"top-1 accuracy on {r['split']}")
    ax.set_title(f"{r['dataset']}: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(run_dir: str | Path, report: dict) -> list[Path]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [run_dir / "report.json", run_dir / "report.md", run_dir / "plots" / "accuracy_vs_macs.png"]
    _atomic_write(paths[0], json.dumps(report, indent=2) + "\n")
    _atomic_write(paths[1], render_markdown(report))
    plot_accuracy_vs_macs(report, paths[2])
    return paths


def headline(r: dict) -> str:
    ro = r["routed"]
    gap = "n/a" if r["gap_closed"] is None else f"{r['gap_closed']:.3f}"
    return (f"routed {_fmt_pct(ro['accuracy'])} at {_fmt_int(ro['macs_per_image'])} MACs/image "
            f"(teacher {_fmt_pct(r['models'][TEACHER]['accuracy'])} at {_fmt_int(r['models'][TEACHER]['macs'])}); "
            f"oracle {_fmt_pct(r['oracle']['accuracy'])}; gap closed {gap}")


def report_run(run_dir, **kw) -> dict:
    """Evaluate, write report.json/report.md/plots, print the tables; what the CLIs and the pipeline call."""
    report = evaluate_run(run_dir, **kw)
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
    p.add_argument("--data-dir", default=None, help="where CIFAR files live (default: the run's)")
    p.add_argument("--download", action="store_true", help="download CIFAR through torchvision (needs network)")
    p.add_argument("--limit", type=int, default=None, help="use at most N test images")
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation step")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = p.parse_args(argv)
    from moskd.runtime import setup_runtime, show_progress

    rt = setup_runtime(a.device)
    report_run(a.run_dir, dataset=a.dataset, data_dir=a.data_dir, download=a.download, limit=a.limit,
               escalate=a.escalate, device=rt.device, batch_size=a.batch_size, progress=show_progress(rt))


if __name__ == "__main__":
    main()
