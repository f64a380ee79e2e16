"""int8 against fp32, side by side: the comparison `moskd export --quantize int8 --report` writes
into the bundle and `benchmarks/bench_int8.py` prints (DESIGN.md, "int8 bundle").

The two bundles come from the same run (same routing rule): the fp32 ONNX bundle and the int8 one,
whose deferral thresholds may have been refitted on its own models' `select` outputs at export.
Each model of both bundles (their own programs, through inference.bundle) is replayed on the run's
`select` and `test` splits (the run's recorded data and split settings, as `moskd report` loads
them); the routed system is each bundle's own `run()`.

Per model and for the routed system: top-1 accuracy fp32 and int8 with a paired-bootstrap 95% CI
of int8 - fp32 over the test images (for the selector, whose output is a routing score: the routed
accuracy with that selector and the fp32 students, and how often its route agrees), file bytes,
and latency per image at each batch size with `threads` intra-op threads, every program of both
bundles timed in the same rounds in a fresh shuffled order each round (medians). The compression
table has an fp32 and an int8 row per model; reductions are against the fp32 teacher when the
bundles hold one (a policy whose deferral steps reach the teacher). The per-image outputs
(`int8_eval_{select,test}.npz`: labels, every model's logits in both precisions, selector scores,
routes and the routed logits) are what a routing policy needs to be refitted on the int8 models.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from inference.bundle import load_bundle
from inference.curves import paired_bootstrap
from inference.quantize_tools import run_splits, side_by_side
from inference.routed_timing import one_at_a_time, routed_sample
from moskd.atomic import write_json, write_npz, write_text
from moskd.errors import MoskdError
from moskd.policy import TEACHER, decide

SPLITS = ("select", "test")
REPORT_JSON, REPORT_MD = "int8_report.json", "int8_report.md"


def programs(b) -> dict:
    out = {"selector": b.selector} if b.selector is not None else {}
    return {**out, **{n: p for n, p in zip(b.route_names, b.programs) if p is not None}}


def entries(m: dict) -> dict:
    return {**({"selector": m["selector"]} if m.get("selector") else {}), **{e["name"]: e for e in m["models"]}}


def replay(b, images: np.ndarray, batch: int = 256) -> dict:
    """Every program of bundle b alone on the split, and the bundle's routed run()."""
    x = b.normalize(images)
    out = {}
    for name, prog in programs(b).items():
        out[name] = np.concatenate([prog(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])
    parts = [b.run(images[i:i + batch]) for i in range(0, len(images), batch)]
    out["routed"] = np.concatenate([p.logits for p in parts])
    out["route"] = np.concatenate([p.routes for p in parts])
    out["macs"] = np.concatenate([p.macs for p in parts])
    return out


def routed_with(b, scores: np.ndarray | None, logits: dict) -> np.ndarray:
    """The bundle's routing policy on given selector scores and given model logits -> predictions, routes."""
    p = b.policy
    d = decide(p, len(next(iter(logits.values()))), lambda k, idx: logits[p.models[k]][idx], scores)
    return d.pred, d.route


def _choice(q: dict) -> dict:
    """What moskd export chose for one model (its manifest record without the candidate list)."""
    return {k: q[k] for k in ("activation_type", "reduce_range", "calibration", "select_accuracy_fp32",
                              "select_accuracy_int8", "speedup_b64", "why") if k in q}


def compare(fp32_correct: np.ndarray, int8_correct: np.ndarray) -> dict:
    d = int8_correct.astype(np.float64) - fp32_correct.astype(np.float64)
    return {"fp32": float(fp32_correct.mean()), "int8": float(int8_correct.mean()),
            "int8_minus_fp32": float(d.mean()), "ci95": paired_bootstrap(d)}




def _structure(policy) -> dict:
    """A policy less its thresholds and target: what an int8 bundle's refit (inference.quantize) keeps."""
    d = policy.to_dict()
    d.pop("target")
    d["steps"] = [{k: v for k, v in st.items() if k != "threshold"} for st in d["steps"]]
    return d


def compare_bundles(run_dir, fp32_dir, int8_dir, *, rounds: int = 5, threads: int = 2, batches=(1, 64),
                    min_s: float = 0.2, run=None) -> tuple[dict, dict]:
    """(report, per-split arrays) of the int8 bundle against the fp32 one of the same run."""
    from inference.router import load_router  # the run's recorded data and split settings

    batches = list(batches)
    fb, ib = load_bundle(fp32_dir, threads), load_bundle(int8_dir, threads)
    if _structure(fb.policy) != _structure(ib.policy):
        raise MoskdError("the two bundles carry different routing policies; export both from the same run")
    splits = run_splits(run if run is not None else load_router(run_dir))
    t0 = time.perf_counter()
    res = {k: {"fp32": replay(fb, splits[k][0]), "int8": replay(ib, splits[k][0])} for k in SPLITS}
    replay_s = time.perf_counter() - t0
    report = {"run_dir": str(Path(run_dir).resolve()), "fp32_bundle": str(fp32_dir), "int8_bundle": str(int8_dir),
              "dataset": fb.manifest["dataset"], "threads": threads, "rounds": rounds, "min_s": min_s,
              "batches": batches,
              "num_images": {k: int(len(splits[k][1])) for k in SPLITS},
              "quantization": ib.manifest.get("quantization"), "models": {}, "routed": {},
              "policy_fp32": fb.policy.describe(), "policy_int8": ib.policy.describe(),
              "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}}
    _accuracies(report, fb, ib, splits, res)
    t0 = time.perf_counter()
    _latencies(report, fb, ib, splits["test"][0], batches, rounds, min_s)
    timing_s = time.perf_counter() - t0
    _routed_vs_teacher(report, fb, batches)
    tb = report["models"].get(TEACHER, {}).get("bytes_fp32")
    report["compression"] = {f"{n}:{tag}": {"bytes": r[f"bytes_{tag}"],
                                            "bytes_vs_fp32": r[f"bytes_{tag}"] / r["bytes_fp32"],
                                            "bytes_reduction_vs_teacher_fp32": None if tb is None
                                            else 1 - r[f"bytes_{tag}"] / tb}
                             for n, r in report["models"].items() for tag in ("fp32", "int8")}
    report["seconds"] = {"replay": round(replay_s, 1), "timing": round(timing_s, 1)}
    return report, _arrays(splits, res, entries(fb.manifest))


def _accuracies(report: dict, fb, ib, splits: dict, res: dict) -> None:
    """Per model and for the routed system, per split: fp32 against int8 accuracy and agreement."""
    fm, im = entries(fb.manifest), entries(ib.manifest)
    for split in SPLITS:
        y = splits[split][1]
        f, q = res[split]["fp32"], res[split]["int8"]
        for name in fm:
            r = report["models"].setdefault(name, {"precision": im[name].get("precision", "fp32"),
                                                    "file_fp32": fm[name]["file"], "file_int8": im[name]["file"],
                                                    "bytes_fp32": fm[name]["bytes"], "bytes_int8": im[name]["bytes"],
                                                    "export_choice": _choice(im[name].get("quantization") or {})})
            if name == "selector":  # routed accuracy with this selector and fp32 students
                pf, rf = routed_with(fb, f["selector"], f)
                pq, rq = routed_with(fb, q["selector"], f)
                r[split] = {**compare(pf == y, pq == y), "route_agreement": float((rf == rq).mean())}
            else:
                r[split] = {**compare(f[name].argmax(1) == y, q[name].argmax(1) == y),
                            "label_agreement": float((f[name].argmax(1) == q[name].argmax(1)).mean())}
        share = {b: np.bincount(res[split][b]["route"], minlength=len(fb.route_names)) / len(y) for b in ("fp32", "int8")}
        report["routed"][split] = {
            **compare(f["routed"].argmax(1) == y, q["routed"].argmax(1) == y),
            "label_agreement": float((f["routed"].argmax(1) == q["routed"].argmax(1)).mean()),
            "route_agreement": float((f["route"] == q["route"]).mean()),
            "route_share_fp32": dict(zip(fb.route_names, share["fp32"].tolist())),
            "route_share_int8": dict(zip(fb.route_names, share["int8"].tolist())),
            "macs_per_image": float(f["macs"].mean()), "macs_per_image_int8": float(q["macs"].mean())}
    report["routed"]["bytes_fp32"] = sum(e["bytes"] for e in fm.values())
    report["routed"]["bytes_int8"] = sum(e["bytes"] for e in im.values())


def _latencies(report: dict, fb, ib, test_u8: np.ndarray, batches: list[int], rounds: int, min_s: float) -> None:
    """Every program of both bundles and both routed systems, side by side in the same rounds (a routed
    system over many test batches, one at a time: inference/routed_timing.py)."""
    rb = report["routed"]
    calls, batches_per_call = {}, {}
    for bs in batches:
        u8 = np.ascontiguousarray(np.resize(test_u8, (bs, *test_u8.shape[1:])))
        x = np.ascontiguousarray(fb.normalize(u8))
        sample = routed_sample(test_u8, bs)
        for tag, b in (("fp32", fb), ("int8", ib)):
            for name, prog in programs(b).items():
                calls[(name, tag, bs)] = (lambda prog=prog, x=x: prog(x))
            calls[("routed", tag, bs)], batches_per_call[("routed", tag, bs)] = one_at_a_time(b, sample, bs)
    for (name, tag, bs), s in side_by_side(calls, rounds=rounds, min_s=min_s).items():
        s /= batches_per_call.get((name, tag, bs), 1)  # seconds per batch
        r = rb if name == "routed" else report["models"][name]
        lat = r.setdefault("latency", {})
        lat.setdefault(f"b{bs}", {})[f"{tag}_ms_per_image"] = 1000 * s / bs
        lat[f"b{bs}"][f"{tag}_images_per_s"] = bs / s
    for r in [*report["models"].values(), rb]:
        for k, v in r["latency"].items():
            v["speedup"] = v["int8_images_per_s"] / v["fp32_images_per_s"]
        r["bytes_ratio"] = r["bytes_int8"] / r["bytes_fp32"]


def _routed_vs_teacher(report: dict, fb, batches: list[int]) -> None:
    """The routed system against the teacher (best precision of each), at the largest batch."""
    rb, big = report["routed"], f"b{max(batches)}"
    macs = {e["name"]: e["macs"] for e in fb.manifest["models"]}
    if TEACHER not in report["models"] or not macs.get(TEACHER):
        return
    t = report["models"][TEACHER]
    tbest = max(t["latency"][big]["fp32_images_per_s"], t["latency"][big]["int8_images_per_s"])
    rtag = max(("fp32", "int8"), key=lambda tag: rb["latency"][big][f"{tag}_images_per_s"])
    rbest = rb["latency"][big][f"{rtag}_images_per_s"]
    # the MACs of the routed bundle that was faster (a refit moves the int8 one's deferral rate)
    ratio = macs[TEACHER] / rb["test"]["macs_per_image" if rtag == "fp32" else "macs_per_image_int8"]
    report["routed_vs_teacher"] = {"batch": max(batches), "speedup": rbest / tbest, "mac_ratio": ratio,
                                   "routed_precision": rtag, "speedup_over_mac_ratio": rbest / tbest / ratio}


def _arrays(splits: dict, res: dict, fm: dict) -> dict:
    """Per split, the labels and every output of both bundles (int8_eval_<split>.npz)."""
    arrays = {}
    for split in SPLITS:
        a = {"labels": splits[split][1]}
        for tag in ("fp32", "int8"):
            d = res[split][tag]
            for n in fm:
                key = "selector_scores" if n == "selector" else f"logits_{n}"
                a[f"{tag}_{key}"] = d[n].astype(np.float32)
            a[f"{tag}_route"], a[f"{tag}_routed_logits"] = d["route"], d["routed"].astype(np.float32)
        arrays[split] = a
    return arrays


def write_int8_report(out: Path, report: dict, arrays: dict) -> str:
    """int8_report.json, int8_report.md and int8_eval_<split>.npz into `out`; returns the markdown."""
    out = Path(out)
    for split, a in arrays.items():
        write_npz(out / f"int8_eval_{split}.npz", a)
    write_json(out / REPORT_JSON, report)
    md = render(report)
    write_text(out / REPORT_MD, md)
    return md


def _chosen(c: dict, none: str) -> str:
    if "activation_type" not in c:
        return none
    return f"{c['activation_type']}/{c['calibration']}" + (", 7-bit weights" if c.get("reduce_range") else "")


def _pt(x):
    return f"{100 * x:.2f}"


def _ci(c):
    return f"{100 * c['int8_minus_fp32']:+.2f} [{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}]"


def render(r: dict) -> str:
    bs = [f"b{b}" for b in r["batches"]]
    lines = [f"# int8 vs fp32 bundle: {r['dataset']}", "",
             f"Run `{r['run_dir']}`; {r['num_images']['test']} test and {r['num_images']['select']} select images; "
             f"latency with {r['threads']} threads, median of {r['rounds']} rounds, every program of both bundles "
             "timed side by side in the same rounds.", "",
             "Selector row: routed accuracy with that selector and the fp32 students.", "",
             "| model | precision | choice | test acc fp32 | test acc int8 | int8 - fp32 [95% CI], pt | select fp32 "
             "| select int8 | bytes fp32 | bytes int8 | ratio | "
             + " | ".join(f"{b} ms/img fp32 | {b} ms/img int8 | {b} speed-up" for b in bs) + " |",
             "|" + "---|" * (11 + 3 * len(bs))]
    q = (r.get("quantization") or {})
    for name, m in [*r["models"].items(), ("routed", r["routed"])]:
        prec = m.get("precision", "as bundled" if name == "routed" else "")
        c = m.get("export_choice", {})
        choice = _chosen(c, "—")
        lat = " | ".join(f"{m['latency'][b]['fp32_ms_per_image']:.4f} | {m['latency'][b]['int8_ms_per_image']:.4f} | "
                         f"{m['latency'][b]['speedup']:.2f}x" for b in bs)
        lines.append(f"| {name} | {prec} | {choice} | {_pt(m['test']['fp32'])} | {_pt(m['test']['int8'])} | "
                     f"{_ci(m['test'])} | {_pt(m['select']['fp32'])} | {_pt(m['select']['int8'])} | "
                     f"{m['bytes_fp32']:,} | {m['bytes_int8']:,} | {m['bytes_ratio']:.3f} | {lat} |")
    lines += ["", f"Quantization: {q.get('format')} per-channel int8 weights, calibrated on {q.get('calib_images')} "
              f"{q.get('calib_split')} images; bound {q.get('bound_points')} pt on select; min speed-up "
              f"{q.get('min_speedup')}x.", ""]
    lines += ["| model | chosen | speed-up at b64 when exported | why it stays fp32 |", "|---|---|---|---|"]
    for name, m in r["models"].items():
        c = m["export_choice"]
        chosen = _chosen(c, "fp32")
        sp = f"{c['speedup_b64']:.2f}x" if "speedup_b64" in c else "—"
        lines.append(f"| {name} | {chosen} | {sp} | {c.get('why', '')} |")
    rt = r["routed"]
    refit = q.get("routing_refit_select") or {}
    lines += ["", f"Policy, fp32 bundle: {r.get('policy_fp32', '—')}; int8 bundle: {r.get('policy_int8', '—')}"
              + (f" (thresholds refitted on the int8 models' select outputs, {refit['select_images']} choosing images: "
                 f"select {_pt(refit['before']['select_accuracy'])}% at {refit['before']['select_macs_per_image'] / 1e6:.2f}M "
                 f"MACs/image before, {_pt(refit['after']['select_accuracy'])}% at "
                 f"{refit['after']['select_macs_per_image'] / 1e6:.2f}M after)" if refit.get("refit") else "")
              + f". Routed MACs/image on test: fp32 {rt['test']['macs_per_image'] / 1e6:.2f}M, int8 "
              f"{rt['test'].get('macs_per_image_int8', rt['test']['macs_per_image']) / 1e6:.2f}M."]
    lines += ["", f"Routed system: route agreement fp32 vs int8 {_pt(rt['test']['route_agreement'])}% on test, "
              f"{_pt(rt['select']['route_agreement'])}% on select; route share int8 on select "
              + ", ".join(f"{k} {_pt(v)}%" for k, v in rt["select"]["route_share_int8"].items())
              + " (fp32: " + ", ".join(f"{k} {_pt(v)}%" for k, v in rt["select"]["route_share_fp32"].items()) + ")."]
    if "routed_vs_teacher" in r:
        v = r["routed_vs_teacher"]
        lines += ["", f"Routed (best precision) vs teacher (best precision) at batch {v['batch']}: {v['speedup']:.2f}x "
                  f"the teacher's images/s; MAC ratio {v['mac_ratio']:.2f}; {v['speedup_over_mac_ratio']:.2f}x the MAC "
                  "ratio."]
    lines += ["", "## Compression", "", "| model:precision | bytes | vs its fp32 | reduction vs fp32 teacher |",
              "|---|---|---|---|"]
    for k, c in r["compression"].items():
        red = "—" if c["bytes_reduction_vs_teacher_fp32"] is None else f"{c['bytes_reduction_vs_teacher_fp32']:.3f}"
        lines.append(f"| {k} | {c['bytes']:,} | {c['bytes_vs_fp32']:.3f} | {red} |")
    return "\n".join(lines) + "\n"


