"""The deployment report of a bundle whose runtimes were chosen on the host (`moskd export --runtime
... --report`, benchmarks/bench_runtime.py --run-dir): the bundle as chosen against the same bundle
run entirely in onnxruntime fp32 (Bundle(force="onnxruntime/fp32"), its fp32 files), grown from
inference/int8_report.py, whose replay and paired comparison it reuses.

Per model and for the routed system: test accuracy of both with a paired-bootstrap 95% CI of
chosen - fp32 (the selector's row: the routed accuracy with that selector and fp32 students); bytes of
the chosen files; p50 latency of single calls at batch 1; images/s at the serving batch and at 64;
the ratio to ORT fp32; and GMAC/s against this CPU's peak for the precision that ran. The routed
system is timed over many test batches (inference/routed_timing.py), one batch at a time and gathered
`gather` batches at a time as `moskd serve --gather` runs a backlog; the gathered row's ratio is given
against ORT fp32 gathered alike and against ORT fp32 one batch at a time.

The peak: a 1024x1024 fp32 matmul (torch), the fastest of PEAK_TRIALS short trials (the one least
disturbed by other work on a shared CPU), on `threads` threads and on one (times `threads`); the larger
is the fp32 peak in GMAC/s; the other precisions scale it by what the CPU flags allow per 32-bit lane and instruction:
bf16 x2 with avx512_bf16/amx_bf16 (VDPBF16PS: 2 bf16 MACs per lane), int8 x4 with VNNI (VPDPBUSD: 4
u8*s8 MACs per lane), x2 without (VPMADDUBSW + VPMADDWD). A measured matmul is a lower bound of the
true fp32 peak, so a model's share of "peak" can only be overstated by what the matmul misses.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from inference.bundle import load_bundle
from inference.config import SERVING_BATCH, SERVING_GATHER
from inference.int8_report import compare, entries, programs, replay, routed_with
from inference.quantize_tools import run_splits, side_by_side
from inference.routed_timing import cycling, gathered, one_at_a_time, routed_sample
from inference.runtimes import BASELINE, cpu_flags, native_bf16
from moskd.atomic import write_json, write_text

REPORT_JSON, REPORT_MD = "deploy_report.json", "deploy_report.md"
P50_CALLS = 20  # single batch-1 calls per program per round
PEAK_TRIALS = 40  # timed trials of 3 matmuls each; the peak is the fastest trial


def _matmul_gmacs(threads: int) -> float:
    """fp32 GMAC/s of the fastest of PEAK_TRIALS trials of 3 1024x1024 torch matmuls on `threads` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(PEAK_TRIALS):  # the fastest trial: the least disturbed by other work on the cores
            t0 = time.perf_counter()
            for _ in range(3):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - t0) / 3)
    finally:
        torch.set_num_threads(before)
    return 1024 ** 3 / best / 1e9


def peak_gmacs(threads: int) -> dict:
    """This CPU's peak GMAC/s per precision (module docstring): fp32 is the larger of the measured
    `threads`-thread matmul and `threads` x the one-thread one (a busy shared core hides the former)."""
    one, many = _matmul_gmacs(1), _matmul_gmacs(threads)
    fp32 = max(many, threads * one)
    flags = cpu_flags()
    vnni = bool({"avx512_vnni", "avx_vnni"} & flags)
    return {"fp32": fp32, "bf16": 2 * fp32 if native_bf16(flags) else fp32, "int8": (4 if vnni else 2) * fp32,
            "fp32_matmul_1_thread": one, f"fp32_matmul_{threads}_threads": many,
            "how": f"fp32: max of a {threads}-thread 1024x1024 torch matmul ({many:.0f}) and {threads} x the "
                   f"1-thread one ({one:.0f}), fastest of {PEAK_TRIALS} trials each; bf16 x2 "
                   f"({'native' if native_bf16(flags) else 'no native bf16: x1'}); int8 x{4 if vnni else 2} "
                   f"({'VNNI' if vnni else 'no VNNI'})"}


def p50_ms(calls: dict, rounds: int, per_round: int = P50_CALLS) -> dict:
    """Median milliseconds of single calls, every callable interleaved in each round (shuffled)."""
    rng = np.random.default_rng(1)
    for f in calls.values():
        f()
    times: dict = {k: [] for k in calls}
    keys = list(calls)
    for _ in range(rounds):
        for i in rng.permutation(len(keys)):
            for _ in range(per_round):
                t0 = time.perf_counter()
                calls[keys[i]]()
                times[keys[i]].append(1000 * (time.perf_counter() - t0))
    return {k: float(np.median(v)) for k, v in times.items()}


def _timings(chosen, base, sample: np.ndarray, rounds: int, min_s: float, batches, gather: int,
             capped) -> tuple[dict, dict]:
    """(p50 ms at batch 1, {batch: images/s}) per (name, "chosen"|"ort_fp32"), routed systems included
    ("routed": one batch at a time, "routed gathered": `gather` batches a window; capped(tag, bs): that
    system's bundle with calls of at most bs images)."""
    systems = (("chosen", chosen), ("ort_fp32", base))

    def model_calls(bs):
        u8 = np.ascontiguousarray(np.resize(sample, (bs, *sample.shape[1:])))
        x = np.ascontiguousarray(base.normalize(u8))
        return {(n, tag): (lambda p=p: p(x)) for tag, b in systems for n, p in programs(b).items()}

    single = routed_sample(sample, 1)
    p50 = p50_ms({**model_calls(1), **{("routed", tag): cycling(b, single) for tag, b in systems}}, rounds)
    ips = {}
    for bs in batches:
        calls, per_call = model_calls(bs), {}
        u8 = routed_sample(sample, bs, at_least=bs * gather)
        for tag, b in systems:
            calls[("routed", tag)], per_call[("routed", tag)] = one_at_a_time(b, u8, bs)
            if bs >= 16 and gather > 1:
                key = ("routed gathered", tag)
                calls[key], per_call[key] = gathered(capped(tag, bs), u8, bs, gather)
        for k, s in side_by_side(calls, rounds=rounds, min_s=min_s).items():
            ips.setdefault(k, {})[bs] = bs * per_call.get(k, 1) / s
    return p50, ips


def build(run_dir, bundle_dir, *, rounds: int = 5, min_s: float = 0.2, threads: int = 2, run=None,
          batches=(SERVING_BATCH, 64), gather: int = SERVING_GATHER) -> dict:
    from inference.router import load_router

    chosen, base = load_bundle(bundle_dir, threads), load_bundle(bundle_dir, threads, force=BASELINE)
    splits = run_splits(run if run is not None else load_router(run_dir))
    x, y = splits["test"]
    c, f = replay(chosen, x), replay(base, x)
    peak = peak_gmacs(threads)
    capped = lambda tag, bs: load_bundle(bundle_dir, threads, force=None if tag == "chosen" else BASELINE,  # noqa: E731
                                         max_call=bs)
    p50, ips = _timings(chosen, base, x, rounds, min_s, batches, gather, capped)
    ents = entries(chosen.manifest)
    rep = {"bundle": str(bundle_dir), "run_dir": str(Path(run_dir).resolve()), "dataset": chosen.manifest["dataset"],
           "threads": threads, "rounds": rounds, "batches": list(batches), "test_images": int(len(y)),
           "host": (chosen.manifest.get("runtime") or {}).get("host"), "peak_gmacs": peak, "models": {}}
    for name, e in ents.items():
        if name == "selector":
            pc, rc = routed_with(base, c["selector"], f)
            pf, rf = routed_with(base, f["selector"], f)
            acc = {**compare(pf == y, pc == y), "route_agreement": float((rc == rf).mean())}
        else:
            acc = {**compare(f[name].argmax(1) == y, c[name].argmax(1) == y),
                   "label_agreement": float((c[name].argmax(1) == f[name].argmax(1)).mean())}
        fp32_bytes = (Path(bundle_dir) / e.get("files", {"fp32": e["file"]})["fp32"]).stat().st_size
        rep["models"][name] = _row(name, acc, e.get("runtime", "onnxruntime"), e.get("precision", "fp32"),
                                   e["bytes"], fp32_bytes, e["macs"], p50, ips, peak, batches, e.get("small_batch"))
    acc = {**compare(f["routed"].argmax(1) == y, c["routed"].argmax(1) == y),
           "label_agreement": float((c["routed"].argmax(1) == f["routed"].argmax(1)).mean()),
           "route_agreement": float((c["route"] == f["route"]).mean())}
    rows = rep["models"].values()
    rep["routed"] = _row("routed", acc, "as chosen", "as chosen", sum(r["bytes"] for r in rows),
                         sum(r["bytes_fp32"] for r in rows), float(c["macs"].mean()), p50, ips, peak, batches, None)
    rep["routed"]["macs_per_image_ort_fp32"] = float(f["macs"].mean())
    got, alike = ips.get(("routed gathered", "chosen"), {}), ips.get(("routed gathered", "ort_fp32"), {})
    rep["routed"]["gathered"] = {"gather": gather, "batch": {
        str(bs): {"images_per_s": got[bs], "images_per_s_ort_fp32": alike[bs], "ratio_to_ort_fp32": got[bs] / alike[bs],
                  "ratio_to_ort_fp32_one_at_a_time": got[bs] / ips[("routed", "ort_fp32")][bs]}
        for bs in batches if bs in got}}
    if rep["routed"]["gathered"]["batch"]:  # the answers a gathered window gives, against the routed run above
        big = max(int(b) for b in rep["routed"]["gathered"]["batch"])
        g, w = capped("chosen", big), gather * big
        parts = [g.run(x[i:i + w]) for i in range(0, len(x), w)]
        labels = np.concatenate([o.logits for o in parts]).argmax(1)
        rep["routed"]["gathered"]["test"] = {
            "batch": big, "accuracy": float((labels == y).mean()),
            "label_agreement": float((labels == c["routed"].argmax(1)).mean()),
            "route_agreement": float((np.concatenate([o.routes for o in parts]) == c["route"]).mean())}
    return rep


def _row(name, acc, runtime, precision, nbytes, fp32_bytes, macs, p50, ips, peak, batches, small) -> dict:
    r = {"runtime": runtime, "precision": precision, "test": acc, "bytes": nbytes, "bytes_fp32": fp32_bytes,
         "macs_per_image": macs, "small_batch": small,
         "p50_ms_b1": p50[(name, "chosen")], "p50_ms_b1_ort_fp32": p50[(name, "ort_fp32")], "batch": {}}
    for bs in batches:
        got, base = ips[(name, "chosen")][bs], ips[(name, "ort_fp32")][bs]
        gmacs = got * macs / 1e9
        r["batch"][str(bs)] = {"images_per_s": got, "images_per_s_ort_fp32": base, "ratio_to_ort_fp32": got / base,
                               "gmacs_per_s": gmacs, "share_of_peak": None if precision not in peak
                               else gmacs / peak[precision]}
    return r


def render(r: dict) -> str:
    big = [str(b) for b in r["batches"]]
    h = r.get("host") or {}
    lines = [f"# Deployment report: {r['dataset']}", "",
             f"Bundle `{r['bundle']}` as chosen on {h.get('cpu', '?')} against the same bundle in onnxruntime fp32; "
             f"{r['test_images']} test images; {r['threads']} threads, median of {r['rounds']} rounds, both timed "
             "side by side in the same rounds. Peak GMAC/s: " + r["peak_gmacs"]["how"] + " = "
             + ", ".join(f"{p} {r['peak_gmacs'][p]:.0f}" for p in ("fp32", "bf16", "int8")) + ".", "",
             "| model | runtime/precision | test acc ORT fp32 → chosen (%) | chosen − fp32 [95% CI], pt | bytes | "
             "p50 b1 ms (ORT fp32) | " + " | ".join(f"b{b} images/s (ratio) | b{b} GMAC/s (of peak)" for b in big)
             + " |", "|" + "---|" * (6 + 2 * len(big))]
    for name, m in [*r["models"].items(), ("routed", r["routed"])]:
        t = m["test"]
        rp = m["runtime"] if name == "routed" else f"{m['runtime']}/{m['precision']}"
        if m.get("small_batch"):
            rp += f" (b≤{m['small_batch']['up_to']}: {m['small_batch']['runtime']}/{m['small_batch']['precision']})"
        cells = []
        for b in big:
            v = m["batch"][b]
            share = "" if v["share_of_peak"] is None else f" ({100 * v['share_of_peak']:.0f}%)"
            cells.append(f"{v['images_per_s']:.0f} ({v['ratio_to_ort_fp32']:.2f}x) | {v['gmacs_per_s']:.1f}{share}")
        lines.append(f"| {name} | {rp} | {100 * t['fp32']:.2f} → {100 * t['int8']:.2f} | "
                     f"{100 * t['int8_minus_fp32']:+.2f} [{100 * t['ci95'][0]:+.2f}, {100 * t['ci95'][1]:+.2f}] | "
                     f"{m['bytes']:,} ({m['bytes'] / m['bytes_fp32']:.2f}x) | {m['p50_ms_b1']:.3f} "
                     f"({m['p50_ms_b1_ort_fp32']:.3f}) | " + " | ".join(cells) + " |")
    g = r["routed"].get("gathered") or {"batch": {}}
    if g["batch"]:
        cells = [f"routed, {g['gather']} batches gathered", f"as chosen (`moskd serve --gather {g['gather']}`)",
                 "", "", "", ""]
        for b in big:
            v = g["batch"].get(b)
            cells += ["—", ""] if v is None else [f"{v['images_per_s']:.0f} ({v['ratio_to_ort_fp32']:.2f}x; "
                                                 f"{v['ratio_to_ort_fp32_one_at_a_time']:.2f}x one at a time)", ""]
        lines.append("| " + " | ".join(cells) + " |")
    rt = r["routed"]["test"]
    if g.get("test"):
        gt = g["test"]
        lines += ["", f"Gathered windows ({g['gather']} x {gt['batch']} images, calls of at most {gt['batch']}) on every "
                  f"test image: accuracy {100 * gt['accuracy']:.2f}%, labels equal to the routed row's on "
                  f"{100 * gt['label_agreement']:.2f}% of images, routes on {100 * gt['route_agreement']:.2f}%."]
    lines += ["", f"Routed system: labels agree with ORT fp32 on {100 * rt['label_agreement']:.2f}% of test images, "
              f"routes on {100 * rt['route_agreement']:.2f}%; MACs/image {r['routed']['macs_per_image'] / 1e6:.2f}M "
              f"(ORT fp32 bundle {r['routed']['macs_per_image_ort_fp32'] / 1e6:.2f}M). Routed GMAC/s share of peak is "
              "left out: its models run in different precisions. Routed rows: over the test set's first 512 images "
              "(a whole gathered window if larger; a smaller test set repeated), one batch at a time; the "
              "gathered row runs the same batches a window at a time, every model call at most one batch, its ratio "
              "to ORT fp32 gathered alike and, after the semicolon, to ORT fp32 one batch at a time."]
    return "\n".join(lines) + "\n"


def deployment_report(run_dir, bundle_dir, out=None, name=None, **kw) -> str:
    """Build, write deploy_report.{json,md} into `out` (default: the bundle), return the markdown;
    `name`: the bundle's path to print (export builds it in a temporary folder)."""
    rep = build(run_dir, bundle_dir, **kw)
    rep["bundle"] = str(name or bundle_dir)
    bundle_dir = out or bundle_dir
    rep["routed"]["batch"] = {b: {**v, "share_of_peak": None} for b, v in rep["routed"]["batch"].items()}
    write_json(Path(bundle_dir) / REPORT_JSON, rep)
    md = render(rep)
    write_text(Path(bundle_dir) / REPORT_MD, md)
    return md
