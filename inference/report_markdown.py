"""report.md: the report's tables and the one-line headline, rendered from report.json's content."""
from __future__ import annotations

import math

from inference.bundle import TEACHER


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


def headline(r: dict) -> str:
    ro = r["routed"]
    gap = "n/a" if r["gap_closed"] is None else f"{r['gap_closed']:.3f}"
    return (f"routed {_fmt_pct(ro['accuracy'])} at {_fmt_int(ro['macs_per_image'])} MACs/image "
            f"(teacher {_fmt_pct(r['models'][TEACHER]['accuracy'])} at {_fmt_int(r['models'][TEACHER]['macs'])}); "
            f"oracle {_fmt_pct(r['oracle']['accuracy'])}; gap closed {gap}")
