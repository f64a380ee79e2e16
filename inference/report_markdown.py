"""report.md: the report's tables and the one-line headline, rendered from report.json's content."""
from __future__ import annotations

import math

from moskd.policy import TEACHER
from moskd.tables import markdown_table

COMPARISONS = (
    ("policy_minus_cascade_same_macs", "deployed policy - best max-softmax cascade at equal MACs"),
    ("learned_minus_max_softmax", "learned deferral - max-softmax cascade at equal MACs"),
    ("hybrid_minus_cascade", "hybrid (selector, then deferral) - cascade at equal MACs: what the selector adds"),
    ("committee_minus_replace", "committee answers - replacing answers at equal MACs"),
)


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
    return "\n".join([
        f"# moskd report: {r['dataset']} / {r['split']} ({r['num_images']} images, input {r['input_size']})", "",
        "Every number here is recomputable from `eval/test.npz` (and `eval/select.npz` for what is chosen).", "",
        *_policy_lines(r),
        "## Accuracy and compute", "", *_accuracy_table(r), "",
        "## Does routing pay?", "", *_evidence(r), "",
        "![accuracy vs MACs](plots/accuracy_vs_macs.png)", "",
        "## Router: cost knob swept (score - knob x relative MACs)", "", *_router_table(r), "",
        "## Max-softmax cascades (escalate when max softmax < threshold)", "",
        *markdown_table(["cascade", "threshold", "accuracy", "MACs / image"],
                        [(key, f"{p['threshold']:.4f}", _fmt_pct(p["accuracy"]), _fmt_int(p["macs_per_image"]))
                         for key, curve in r["curves"]["cascade"].items() for p in _thin(curve, 6)], "lrrr"), "",
        "## Per-class accuracy", "", *_per_class_table(r["models"], r.get("class_names")), "",
        "![confusion matrices](plots/confusion.png)", "",
        "## Compression (reductions against the teacher; negative = larger)", "", *_compression_table(r), "",
        "MACs per image of `routed`: selector + route-weighted model MACs; its bytes: selector + students; "
        "`bundle`: every model a deployment holds.", "",
    ])


def _accuracy_table(r: dict) -> list[str]:
    models, ro, b, same = r["models"], r["routed"], r["baselines"], r.get("cascade_same_macs")
    student_macs = sum(models[k]["macs"] for k in ro["students"])
    rows = [(f"{k} ({v['role'] + ('' if v.get('routed', True) else ', not routed')})", _fmt_pct(v["accuracy"]),
             _fmt_int(v["macs"]), f"{v['ece']:.4f}", _fmt_pct(v.get("agreement_with_teacher")))
            for k, v in models.items() if v["accuracy"] is not None]
    rows.append((f"selector alone (knob {ro['knob']:.4f})", f"**{_fmt_pct(ro['accuracy'])}**",
                 _fmt_int(ro["macs_per_image"]), "", ""))
    if same:
        rows.append((f"cascade {same['cascade']} (threshold {same['threshold']:.4f}, chosen on select at the routed "
                     f"MACs)", _fmt_pct(same["accuracy"]), _fmt_int(same["macs_per_image"]), "", ""))
    rows += [("random router, same route shares", _fmt_pct(b["random_same_share"]), _fmt_int(ro["macs_per_image"]), "", ""),
             ("more-confident student (runs all students)", _fmt_pct(b["most_confident"]), _fmt_int(student_macs), "", ""),
             ("oracle (any routed student right)", _fmt_pct(r["oracle"]["accuracy"]), "-", "", "")]
    return markdown_table(["system", "accuracy", "MACs / image", "ECE", "agreement with teacher"], rows, "lrrrr")


def _evidence(r: dict) -> list[str]:
    models, ro, b, sel, ci = r["models"], r["routed"], r["baselines"], r["selector"], r["ci95"]
    same, best, gap, iso = r.get("cascade_same_macs"), r["best_single_student"], r["gap_closed"], r["iso_accuracy"]
    share = ", ".join(f"{k} {_fmt_pct(v)}" for k, v in ro["route_share"].items())
    return [
        f"- best single student (chosen on `select`): {best}",
        f"- routed - {best}: {_pt(ro['accuracy'] - models[best]['accuracy'])}, 95% CI "
        f"{_ci(ci['routed_minus_best_student'])} (paired bootstrap over test images)",
        f"- routed - random router with the same shares: {_pt(ro['accuracy'] - b['random_same_share'])}, 95% CI "
        f"{_ci(ci['routed_minus_random'])}",
        (f"- routed - cascade {same['cascade']} at the routed MACs: {_pt(ro['accuracy'] - same['accuracy'])}, 95% CI "
         f"{_ci(ci['routed_minus_cascade_same_macs'])}" if same else "- no cascade fits within the routed MACs"),
        f"- gap closed: {'n/a (oracle equals the best student)' if gap is None else f'{gap:.3f}'} "
        "((routed - best single student) / (oracle - best single student))",
        f"- MACs per image of the cheapest point whose *select* accuracy reaches the teacher's (its test MACs): "
        f"router {_fmt_int(iso['teacher']['router'])}, cascade {_fmt_int(iso['teacher']['cascade'])}; reaching "
        f"{best}'s: router {_fmt_int(iso['best_student']['router'])}, cascade "
        f"{_fmt_int(iso['best_student']['cascade'])} (- = never)",
        f"- on the {sel['exactly_one_right']} test images exactly one student gets right: selector routes "
        f"{_fmt_pct(sel['accuracy_on_exactly_one_right'])} to the right one, the cascade answers "
        f"{_fmt_pct(sel['cascade_accuracy_on_exactly_one_right'])} right",
        f"- route share: {share}; selector cost: {_fmt_pct(sel['macs_share_of_cheapest_student'])} of the "
        "cheapest student's MACs",
    ]


def _router_table(r: dict) -> list[str]:
    names = r["routed"]["students"]
    rows = [(f"{p['knob']:.4f}", _fmt_pct(p["accuracy"]), _fmt_int(p["macs_per_image"]),
             *(_fmt_pct(p["share"][k]) for k in names)) for p in _thin(r["curves"]["router"])]
    return markdown_table(["knob", "accuracy", "MACs / image", *(f"to {k}" for k in names)], rows,
                          "r" * (3 + len(names)))


def _per_class_table(models: dict, classes: list | None) -> list[str]:
    classes = classes or [str(i) for i in range(len(next(
        v for v in models.values() if v["per_class_accuracy"])["per_class_accuracy"]))]
    rows = [(k, *(_fmt_pct(a) for a in v["per_class_accuracy"])) for k, v in models.items() if v["per_class_accuracy"]]
    return markdown_table(["model", *classes], rows, "l" + "r" * len(classes))


def _compression_table(r: dict) -> list[str]:
    comp = r["compression"]
    rows = [(k, _fmt_int(v["params"]), _fmt_int(v["bytes"]), _fmt_int(v["macs"]),
             _fmt_pct(comp[k]["params_reduction"]), _fmt_pct(comp[k]["bytes_reduction"]),
             _fmt_pct(comp[k]["macs_reduction"])) for k, v in [*r["models"].items(), *r["systems"].items()]]
    return markdown_table(["model", "params", "bytes", "MACs / image", "params red.", "bytes red.", "MACs red."],
                          rows, "lrrrrrr")


def _policy_lines(r: dict) -> list[str]:
    """The deployed policy, every family's select-chosen points and the comparisons, with CIs."""
    pol, ci, t = r["policy"], r["ci95"], r["models"][TEACHER]
    best = r["best_single_student"]
    lines = ["## Deployed routing policy (chosen on `select`)", "",
             f"`{pol['description']}`", "",
             f"- test: **{_fmt_pct(pol['accuracy'])}** at {_fmt_int(pol['macs_per_image'])} MACs per image "
             f"({pol['macs_per_image'] / t['macs']:.2f}x the teacher's); chosen by: {pol['target'].get('rule', '-')}, "
             f"select accuracy {_fmt_pct(pol['target'].get('select_accuracy'))} at "
             f"{_fmt_int(pol['target'].get('select_macs_per_image'))} MACs",
             f"- deployed - teacher: {_pt(pol['minus_teacher'])}, 95% CI {_ci(ci['policy_minus_teacher'])}",
             f"- deployed - {best}: {_pt(pol['minus_best_student'])}, 95% CI {_ci(ci['policy_minus_best_student'])}"]
    for key, text in COMPARISONS:
        c = r["comparisons"].get(key)
        lines.append(f"- {text}: " + ("no comparable point" if c is None else
                                       f"{_pt(c['difference'])}, 95% CI {_ci(c['ci95'])} (`{c['a']['policy']}` vs "
                                       f"`{c['b']['policy']}`)"))
    under = pol.get("best_under_teacher_macs")
    if under:
        lines.append(f"- most accurate point within the teacher's MACs (chosen on select): `{under['policy']}`, "
                     f"{_fmt_pct(under['accuracy'])} at {_fmt_int(under['macs_per_image'])} MACs")
    match = pol.get("dispatch_matches_replay")
    if match:
        lines.append(f"- the real sub-batch dispatch against the replay on test: labels {_fmt_pct(match['labels'])}, "
                     f"routes {_fmt_pct(match['routes'])} equal")
    lines += ["", "### MACs to reach the teacher's accuracy, per family (cheapest point whose select accuracy "
              "reaches the teacher's select accuracy)", "",
              *markdown_table(["family", "policy", "test accuracy", "MACs / image", "x teacher"],
                              [(fam, "never", "-", "-", "-") if row is None else
                               (fam, f"`{row['policy']}`", _fmt_pct(row["accuracy"]), _fmt_int(row["macs_per_image"]),
                                f"{row['macs_per_image'] / t['macs']:.2f}")
                               for fam, row in r["iso_points"]["teacher"].items()], "llrrr")]
    lines += ["", "### Every family's select-Pareto points, scored on test", "",
              *markdown_table(["family", "policy", "select acc.", "test acc.", "MACs / image"],
                              [(fam, f"`{p['policy']}`", _fmt_pct(p["select_accuracy"]), _fmt_pct(p["accuracy"]),
                                _fmt_int(p["macs_per_image"])) for fam, curve in r["curves"]["families"].items()
                               for p in _thin(curve, 6)], "llrrr")]
    return lines + [""]


def headline(r: dict) -> str:
    ro, pol = r["routed"], r["policy"]
    gap = "n/a" if r["gap_closed"] is None else f"{r['gap_closed']:.3f}"
    return (f"policy {pol['family']} {_fmt_pct(pol['accuracy'])} at {_fmt_int(pol['macs_per_image'])} MACs/image; "
            f"selector alone {_fmt_pct(ro['accuracy'])} at {_fmt_int(ro['macs_per_image'])} MACs/image "
            f"(teacher {_fmt_pct(r['models'][TEACHER]['accuracy'])} at {_fmt_int(r['models'][TEACHER]['macs'])}); "
            f"oracle {_fmt_pct(r['oracle']['accuracy'])}; gap closed {gap}")
