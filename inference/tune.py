"""The runtime and precision of each bundle model, chosen on this host by measurement
(`moskd export --runtime ... --precision ...` and `moskd export --retune BUNDLE`).

At export, after the fp32 ONNX files are written and checked:

1. int8 (when --precision is auto or int8): inference/quantize.py's candidates, scored on `select`;
   the fastest QDQ graph within --int8-bound points (onnxruntime's timing picks the graph) is kept as
   NAME.int8.onnx beside the fp32 file. A model with none keeps its fp32 file only, and says why.
2. Every available (runtime, precision) of the model (inference.runtimes.candidates) is opened, run on
   `select` (accuracy points lost against onnxruntime fp32) and timed side by side, interleaved in
   the same rounds, at batch 1 and at the serving batch (inference.config.SERVING_BATCH, `moskd serve
   --max-batch`'s default), SPEED_THREADS threads.
3. runtimes.choose picks per batch regime: the fastest within the bound and faster than onnxruntime
   fp32, else onnxruntime fp32. The manifest entry's "runtime"/"precision"/"file" are the serving
   batch's choice; "small_batch" the batch-1 choice (run for sub-batches of up to SMALL_BATCH images)
   when it differs; "files" both files; "runtime_choice" the figures and why each candidate lost.
4. The routing policy's deferral thresholds are refitted on the chosen models' `select` outputs
   (inference.policy_fit.refit_thresholds, as the int8 export does).

--retune re-times an existing bundle's candidates on this host. A bundle carries no `select` data, so
it keeps the accuracy verdicts recorded at export (a candidate never measured there stays out) and the
exported thresholds; only the timing, and so the choice among the verdicts' survivors, changes.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from inference.config import SERVING_BATCH
from inference.policy_fit import refit_thresholds
from inference.quantize import DEFAULT_BOUND, quantize_model, select_data
from inference.quantize_tools import SPEED_THREADS, side_by_side
from inference.runtimes import (BASELINE, SMALL_BATCH, RuntimeUnavailable, candidates, choose,
                                cpu_flags, key, native_bf16, open_program)

ROUNDS = 5  # timing rounds (medians), each candidate run for at least MIN_S seconds a round
MIN_S = 0.2
REGIMES = (1, SERVING_BATCH)


def outputs_of(prog, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([prog(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


def host() -> dict:
    """The CPU the figures were measured on."""
    flags = cpu_flags()
    model = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo().splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": native_bf16(flags),
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "avx512": "avx512f" in flags}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def open_candidates(files: dict, cands: list, dropped: dict, threads: int) -> dict:
    """{key: program} of the candidates this host can open; the others join `dropped` with why."""
    progs = {}
    for rt, pr in cands:
        try:
            progs[key(rt, pr)] = open_program(files["fp32" if pr == "bf16" else pr], rt, pr, threads)
        except RuntimeUnavailable as e:
            dropped[key(rt, pr)] = str(e)
    return progs


def time_programs(progs: dict, sample: np.ndarray, rounds: int | None = None, min_s: float | None = None) -> dict:
    """{key: {"b1": ms, "bN": ms}}: every program at every regime, interleaved in the same rounds
    (ROUNDS rounds of at least MIN_S seconds each, read at call time: tests shorten them)."""
    rounds, min_s = rounds or ROUNDS, min_s or MIN_S
    calls = {}
    for bs in REGIMES:
        x = np.ascontiguousarray(np.resize(sample, (bs, *sample.shape[1:])))
        for k, p in progs.items():
            calls[(k, f"b{bs}")] = (lambda p=p, x=x: p(x))
    secs = side_by_side(calls, rounds=rounds, min_s=min_s)
    out: dict = {k: {} for k in progs}
    for (k, regime), s in secs.items():
        out[k][regime] = 1000 * s
    return out


def decide_regimes(figures: dict, bound: float) -> dict:
    """runtimes.choose per regime: {"b1": (key, why_not), "bN": ...}."""
    return {f"b{bs}": choose(figures, bound, f"b{bs}") for bs in REGIMES}


def apply_choice(entry: dict, files: dict, rec: dict, root: Path) -> None:
    """The manifest entry of one model from its record: the serving batch's choice, the batch-1 one."""
    big, small = rec["chosen"][f"b{SERVING_BATCH}"], rec["chosen"]["b1"]
    rt, pr = big.split("/")
    file = files["fp32" if pr == "bf16" else pr]
    entry.update(file=file, bytes=(root / file).stat().st_size, runtime=rt, precision=pr, files=dict(files),
                 runtime_choice=rec)
    entry.pop("small_batch", None)
    if small != big:
        srt, spr = small.split("/")
        entry["small_batch"] = {"runtime": srt, "precision": spr, "up_to": SMALL_BATCH}


def measure_model(name: str, root: Path, files: dict, scorer, runtime: str, precision: str, bound: float,
                  int8_why: str | None, log=print) -> tuple[dict, dict]:
    """One model's candidates opened, scored on select, timed; returns (record, {key: select outputs})."""
    cands, dropped = candidates(files, runtime, precision, int8_why=int8_why)
    progs = open_candidates({p: root / f for p, f in files.items()}, cands, dropped, SPEED_THREADS)
    outs = {}
    for k, p in list(progs.items()):
        try:
            outs[k] = outputs_of(p, scorer.x)
        except Exception as e:  # noqa: BLE001  compiled, but refuses to run (a shape it cannot take): not available
            if k == BASELINE:
                raise
            dropped[k] = f"fails on select: {(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}"
            del progs[k]
    base_acc = scorer(name, outs[BASELINE])
    figures = {}
    for k, out in outs.items():
        acc = scorer(name, out)
        same = (scorer.routed(out, scorer.fp32)[1] == scorer.routed(outs[BASELINE], scorer.fp32)[1]
                if name == "selector" else out.argmax(1) == outs[BASELINE].argmax(1))
        figures[k] = {"select_accuracy": acc, "drop_points": 100 * (base_acc - acc),
                      "select_agreement_with_ort_fp32": float(same.mean())}
    for k, ms in time_programs(progs, scorer.x).items():
        figures[k]["ms"] = ms
    rec = finish_record(figures, dropped, bound)
    log(f"runtime: {name}: " + "; ".join(f"{k} {f['ms']['b1']:.3f}/{f['ms'][f'b{SERVING_BATCH}']:.2f} ms, "
                                         f"{f['drop_points']:+.2f} pt" for k, f in figures.items())
        + f" -> b{SERVING_BATCH} {rec['chosen'][f'b{SERVING_BATCH}']}, b1 {rec['chosen']['b1']}")
    return rec, outs


def finish_record(figures: dict, dropped: dict, bound: float) -> dict:
    chosen = decide_regimes(figures, bound)
    return {"serving_batch": SERVING_BATCH, "threads": SPEED_THREADS, "bound_points": bound,
            "candidates": figures, "unavailable": dropped,
            "chosen": {r: k for r, (k, _) in chosen.items()},
            "why_not": {r: why for r, (_, why) in chosen.items()}}


def _int8_file(name: str, root: Path, work: Path, calib_x, scorer, bound: float, log) -> tuple[str | None, dict]:
    """quantize.py's best QDQ graph within the bound, as NAME.int8.onnx (speed does not veto it here:
    the runtime choice times it under each runtime)."""
    chosen, rec = quantize_model(name, root / f"{name}.onnx", work, calib_x, scorer, bound=bound, min_speedup=0.0,
                                 log=lambda *_: None)
    if chosen is None:
        log(f"runtime: {name}: no int8 file ({rec['why']})")
        return None, rec
    os.replace(chosen, root / f"{name}.int8.onnx")
    return f"{name}.int8.onnx", rec


def tune_bundle(root: Path, entries: dict, run, policy, *, runtime: str = "auto", precision: str = "auto",
                calib: int | None = None, bound: float = DEFAULT_BOUND, log=print) -> tuple[dict, object]:
    """Choose every model's (runtime, precision) in the bundle being written in `root` (entries updated
    in place); returns the manifest's "runtime" record and the policy refitted on the chosen outputs."""
    t0 = time.perf_counter()
    calib, calib_x, sel_x, sel_y, fp32, scorer = select_data(root, entries, run, policy, calib, log,
                                                             int8=precision in ("auto", "int8"))
    chosen_out = {}
    order = [n for n in entries if n != "selector"] + (["selector"] if "selector" in entries else [])
    with tempfile.TemporaryDirectory(dir=root, prefix=".quant.") as work:
        for name in order:
            e = entries[name]
            files, int8_why, qrec = {"fp32": e["file"]}, None, None
            if precision in ("auto", "int8"):
                file, qrec = _int8_file(name, root, Path(work), calib_x, scorer, bound, log)
                if file:
                    files["int8"] = file
                else:
                    int8_why = f"no int8 file: {qrec['why']}"
            rec, outs = measure_model(name, root, files, scorer, runtime, precision, bound, int8_why, log)
            if qrec is not None:
                rec["quantization"] = {k: v for k, v in qrec.items() if k != "candidates"}
            apply_choice(e, files, rec, root)
            chosen_out[name] = outs[rec["chosen"][f"b{SERVING_BATCH}"]]
    acc32, r32 = scorer.routed(fp32.get("selector"), fp32)
    acc, r = scorer.routed(chosen_out.get("selector"), chosen_out)
    refit, refit_rec = refit_thresholds(policy, {k: v for k, v in chosen_out.items() if k != "selector"},
                                        chosen_out.get("selector"), sel_y, run.card.get("heldout_index"))
    if refit_rec["refit"]:
        log(f"runtime: routing refitted on the chosen models' select outputs: {refit_rec['before']['policy']} "
            f"-> {refit_rec['after']['policy']}")
    return {"flags": {"runtime": runtime, "precision": precision}, "host": host(), "bound_points": bound,
            "serving_batch": SERVING_BATCH, "small_batch_up_to": SMALL_BATCH, "threads": SPEED_THREADS,
            "calib_images": calib, "rounds": ROUNDS, "min_s": MIN_S,
            "routing_recheck_select": {"routed_accuracy_ort_fp32": acc32, "routed_accuracy_chosen": acc,
                                       "route_agreement": float((r32 == r).mean())},
            "routing_refit_select": refit_rec, "seconds": round(time.perf_counter() - t0, 1)}, refit


def retune_entry(entry: dict, root: Path, size: list, runtime: str, precision: str) -> dict:
    """Re-time one model of an exported bundle; the export's accuracy verdicts stand."""
    files = dict(entry["files"])
    old = entry["runtime_choice"]
    cands, dropped = candidates(files, runtime, precision,
                                int8_why=old.get("unavailable", {}).get(key("onnxruntime", "int8")))
    progs = open_candidates({p: root / f for p, f in files.items()}, cands, dropped, SPEED_THREADS)
    sample = np.random.default_rng(0).standard_normal((SERVING_BATCH, *size)).astype(np.float32)
    figures = {}
    for k, ms in time_programs(progs, sample).items():
        verdict = old["candidates"].get(k, {})
        figures[k] = {**{f: verdict[f] for f in ("select_accuracy", "drop_points", "select_agreement_with_ort_fp32")
                         if f in verdict}, "ms": ms}
        figures[k].setdefault("drop_points", 0.0 if k == BASELINE else None)
    rec = finish_record(figures, dropped, old["bound_points"])
    if "quantization" in old:
        rec["quantization"] = old["quantization"]
    rec["exported_figures"] = {k: f.get("ms") for k, f in old["candidates"].items()}
    return rec


def retune_bundle(root: str | Path, runtime: str = "auto", precision: str = "auto", log=print) -> dict:
    """`moskd export --retune BUNDLE`: every model's candidates re-timed here, the choice remade, the
    manifest rewritten in place (atomically); returns the manifest."""
    import json

    from inference.bundle import MANIFEST
    from moskd.atomic import write_json
    from moskd.errors import MoskdError

    root = Path(root)
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise MoskdError(f"--retune {root}: no readable {MANIFEST} ({e}); pass a bundle folder moskd export wrote")
    models = [e for e in [m.get("selector"), *m.get("models", [])] if e]
    if not models or any("runtime_choice" not in e for e in models):
        raise MoskdError(f"--retune {root}: the bundle records no runtime choice; export it with "
                         "--runtime/--precision first (it then keeps the fp32 and int8 files to choose from)")
    for e in models:
        rec = retune_entry(e, root, list(m["input_size"]), runtime, precision)
        apply_choice(e, e["files"], rec, root)
        log(f"retune: {e.get('name', 'selector')}: b{SERVING_BATCH} {rec['chosen'][f'b{SERVING_BATCH}']}, "
            f"b1 {rec['chosen']['b1']}")
    m.setdefault("runtime", {})["retuned"] = {"host": host(), "flags": {"runtime": runtime, "precision": precision},
                                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(root / MANIFEST, m)
    return m
