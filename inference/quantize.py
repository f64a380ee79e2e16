"""Static post-training int8 quantization of a bundle's ONNX models (`moskd export --quantize int8`).

For every model of the bundle (the selector, students and teacher the routing policy runs), after the
fp32 ONNX file is written:

1. onnxruntime.quantization.quant_pre_process (symbolic shape inference + graph optimisation), the
   step onnxruntime's quantization docs prescribe before static quantization;
2. calibration on N `train` images, normalised exactly as the bundle normalises its inputs
   (inference.bundle.Bundle.normalize), once per calibration method (MinMax, Entropy,
   Percentile); the ranges are cached and shared by both activation types;
3. quantize_static, QDQ format, per-channel int8 weights, for each candidate (activation type x
   calibration method, and for uint8 activations 8- or 7-bit weights): 3 x 3 candidates; a model
   with BatchNormalization left after folding (DenseNet's, after each concatenation) also tries
   those nodes in fp32 (3 x 3 x 2), and its int8 BN scales are quantized per channel (BN_AXIS).
   7-bit weights (`reduce_range`) are what onnxruntime's docs prescribe for uint8 x int8 on x86
   CPUs without VNNI, whose u8 x s8 multiply-adds saturate int16 partial sums with 8-bit weights;
   measured: fashion-mnist models on AVX2 lost 0.8-2.7 points on `select` with 8-bit weights;
4. each candidate is scored on `select`: accuracy beside the fp32 file's (for the selector: the
   routed accuracy with the fp32 students, since its output is a routing score), and images/s at
   batch 64 and 2 threads, timed side by side with the fp32 file in the same rounds (calibration
   ranges and 7-bit weights change values, not operators, so a graph is timed once per activation
   type, with 8-bit weights);
5. of the candidates whose `select` accuracy is within --int8-bound points of fp32 and whose
   speed-up exceeds --int8-min-speedup, `choose` takes the fastest graph (speed-ups within 10%
   count as equal), the smallest file among equals, and its most accurate calibration; it replaces
   the fp32 file. When no candidate passes, the model stays fp32 and its manifest entry says why.

Every manifest entry gains "precision" ("int8" | "fp32") and "quantization" (what was tried, what
was measured, what was chosen or why none was). The bundle runtime loads the QDQ files through
onnxruntime unchanged.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from inference.config import INT8_BOUND as DEFAULT_BOUND, INT8_CALIB as DEFAULT_CALIB  # the flags' defaults
from inference.config import INT8_MIN_SPEEDUP as DEFAULT_MIN_SPEEDUP
from inference.policy_fit import refit_thresholds
from moskd.policy import Policy, decide
from inference.quantize_tools import (CALIB_BATCH, SPEED_THREADS, CalibReader, _call, normalize, outputs,  # noqa: F401
                                      run_splits, session, side_by_side)
from moskd.errors import MoskdError

ACTIVATIONS = ("QUInt8", "QInt8")
METHODS = ("MinMax", "Entropy", "Percentile")
# (activation type, reduce_range): 7-bit weights only matter for uint8 activations (see step 3)
CANDIDATE_GRAPHS = (("QUInt8", False), ("QUInt8", True), ("QInt8", False))
# A BatchNormalization that cannot fold into a convolution (DenseNet's, after each concatenation)
# keeps its scale as a weight; onnxruntime's per-channel default axis (1) is out of range for that
# rank-1 tensor, so it would fall back to one scale for every channel's gamma. Axis 0 is the channel.
BN_AXIS = {"BatchNormalization": 0}
SPEED_BATCH = 64


def check_calib(n) -> int:
    """--calib: a whole number of train images >= 1 (one line on bad input)."""
    try:
        v = int(n)
    except (TypeError, ValueError):
        raise MoskdError(f"--calib must be a whole number of train images, got {n!r}") from None
    if v < 1 or str(n).strip() != str(v):
        raise MoskdError(f"--calib must be a whole number of train images >= 1, got {n!r}")
    return v


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


class Scorer:
    """`select` accuracy of one model's outputs: top-1 for a classifier; for the selector, the routed
    accuracy of the bundle's rule with every other model fp32."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, fp32: dict, policy: Policy):
        self.x, self.labels, self.fp32, self.policy = x, labels, fp32, policy

    def routed(self, scores: np.ndarray | None, logits: dict) -> tuple[float, np.ndarray]:
        """The run's routing policy (moskd.policy.decide) on these outputs: accuracy and routes."""
        p = self.policy
        d = decide(p, len(self.labels), lambda k, idx: logits[p.models[k]][idx], scores)
        return float((d.pred == self.labels).mean()), d.route

    def __call__(self, name: str, out: np.ndarray) -> float:
        if name == "selector":
            return self.routed(out, self.fp32)[0]
        return _accuracy(out, self.labels)


def _quantize(src: Path, dst: Path, reader: CalibReader | None, activation: str, method: str, cache: Path,
              batchnorm: str = "int8", reduce_range: bool = False):
    """quantize_static, QDQ, per-channel int8 weights (7-bit with reduce_range); batchnorm "fp32" leaves
    unfolded BatchNormalization nodes (and their scales) unquantized: one Q/DQ pair less per such node."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    ops = None if batchnorm == "int8" else [op for op in QDQRegistry if op != "BatchNormalization"]
    if reader is not None:
        reader.rewind()
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators narrate every step on stdout
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
                        reduce_range=reduce_range,
                        op_types_to_quantize=ops, calibrate_method=getattr(CalibrationMethod, method),
                        calibration_cache_path=str(cache),
                        extra_options={"CalibStridedMinMax": 1, "QDQOpTypePerChannelSupportToAxis": BN_AXIS})


def _has_batchnorm(path: Path) -> bool:
    import onnx

    return any(n.op_type == "BatchNormalization" for n in onnx.load(str(path), load_external_data=False).graph.node)


def quantize_file(src: Path, dst: Path, calib_x: np.ndarray, activation: str = "QUInt8", method: str = "MinMax"
                  ) -> Path:
    """One fp32 ONNX file -> one QDQ int8 file (pre-processed, calibrated on calib_x): what
    benchmarks time; quantize_model tries every candidate instead."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant.") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        name = session(src).get_inputs()[0].name
        _quantize(pre, dst, CalibReader(calib_x, name), activation, method, Path(work) / "ranges.json")
    return dst


SPEED_TIE = 1.1  # speed-ups within 10% of the fastest count as equal: timing noise on a shared CPU


def choose(ok: list[dict]) -> dict:
    """Among the candidates within the bounds: the graph (activation type, batchnorm) decides speed and
    bytes, the calibration method only accuracy. So: the graphs whose speed-up is within SPEED_TIE of
    the fastest, of those the smallest file, and in that graph the most accurate calibration."""
    graph = lambda c: (c["activation_type"], c.get("batchnorm", "int8"))  # noqa: E731
    fastest = max(c["speedup_b64"] for c in ok)
    near = [c for c in ok if c["speedup_b64"] * SPEED_TIE >= fastest]
    small = graph(min(near, key=lambda c: (c["bytes"], -c["speedup_b64"])))
    return max((c for c in near if graph(c) == small), key=lambda c: (c["select_accuracy"], c["speedup_b64"]))


def _candidates_of(name: str, method: str, pre: Path, work: Path, reader, bns, scorer, fp32_out) -> list:
    """Every graph of one calibration method, scored on `select`: [(record, file)]. The first one
    calibrates (all tensors) into the method's range cache; the others reuse it."""
    cache = work / f"{name}.{method}.ranges.json"
    got = []
    for bn in bns:
        for act, rr in CANDIDATE_GRAPHS:
            dst = work / f"{name}.{act}.{method}.bn{bn}{'.rr' if rr else ''}.onnx"
            t0 = time.perf_counter()
            _quantize(pre, dst, None if cache.is_file() else reader, act, method, cache, bn, rr)
            out = outputs(session(dst), scorer.x)
            acc = scorer(name, out)
            if name == "selector":
                agree = float((scorer.routed(out, scorer.fp32)[1] == scorer.routed(fp32_out, scorer.fp32)[1]).mean())
            else:
                agree = float((out.argmax(1) == fp32_out.argmax(1)).mean())
            c = {"activation_type": act, "weight_type": "QInt8", "reduce_range": rr, "calibration": method,
                 "select_accuracy": acc, "select_agreement_with_fp32": agree,
                 "bytes": dst.stat().st_size, "seconds_to_quantize": round(time.perf_counter() - t0, 2)}
            if len(bns) > 1:
                c["batchnorm"] = bn
            got.append((c, dst))
    return got


def _why_none(cands: list[dict], bound: float, min_speedup: float) -> str:
    """Why no int8 candidate was kept: the accuracy bound, the speed floor, or each failing one of the two."""
    best_acc = min(cands, key=lambda c: c["drop_points"])
    fastest = max(cands, key=lambda c: c["speedup_b64"])
    why = []
    if best_acc["drop_points"] > bound:
        why.append(f"every candidate loses more than {bound} points on select (least: "
                   f"{best_acc['activation_type']}/{best_acc['calibration']}, {best_acc['drop_points']:.2f})")
    if fastest["speedup_b64"] <= min_speedup:
        why.append(f"no candidate is faster than {min_speedup}x fp32 at batch {SPEED_BATCH}, "
                   f"{SPEED_THREADS} threads (best: {fastest['speedup_b64']:.2f}x)")
    if not why:
        why.append(f"the candidates within {bound} points are not faster than {min_speedup}x fp32, and the "
                   f"faster ones lose more than {bound} points")
    return "; ".join(why)


def quantize_model(name: str, fp32_file: Path, work: Path, calib_x: np.ndarray, scorer: Scorer, *,
                   bound: float, min_speedup: float, rounds: int = 5, log=print) -> tuple[Path | None, dict]:
    """Every candidate of one model, scored on `select`; returns (chosen int8 file or None, record)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / f"{name}.pre.onnx"
    quant_pre_process(str(fp32_file), str(pre))
    fp32_sess = session(fp32_file)
    fp32_out = outputs(fp32_sess, scorer.x)
    fp32_acc = scorer(name, fp32_out)
    reader = CalibReader(calib_x, fp32_sess.get_inputs()[0].name)
    # BatchNormalization left after folding (DenseNet's, after a concatenation): int8 or fp32, measured
    bns = ("int8", "fp32") if _has_batchnorm(pre) else ("int8",)
    cands, files, skipped = [], {}, {}
    for method in METHODS:
        try:
            got = _candidates_of(name, method, pre, work, reader, bns, scorer, fp32_out)
        except Exception as e:  # noqa: BLE001  e.g. Entropy's "Too many bins for data range" on a flat model
            skipped[method] = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            log(f"quantize: {name}: {method} calibration skipped: {skipped[method]}")
            continue
        for c, dst in got:
            cands.append(c)
            files[(c["activation_type"], method, c.get("batchnorm", "int8"), c["reduce_range"])] = dst
    if not cands:
        return None, {"select_accuracy_fp32": fp32_acc, "fp32_bytes": fp32_file.stat().st_size, "bound_points": bound,
                      "min_speedup": min_speedup, "candidates": [], "skipped_calibrations": skipped,
                      "why": "no calibration method could calibrate it: " + "; ".join(
                          f"{m}: {w}" for m, w in skipped.items())}
    timed = next(m for m in METHODS if m not in skipped)  # calibration moves scales only: any one times the graph
    # speed: one graph per (activation type, batchnorm) (calibration only moves scales), beside fp32
    xb = np.ascontiguousarray(np.resize(scorer.x, (SPEED_BATCH, *scorer.x.shape[1:])))
    graphs = {(act, bn): session(files[(act, timed, bn, False)]) for act in ACTIVATIONS for bn in bns}
    secs = side_by_side({"fp32": _call(fp32_sess, xb), **{k: _call(v, xb) for k, v in graphs.items()}},
                        rounds=rounds)
    for c in cands:
        c["speedup_b64"] = secs["fp32"] / secs[(c["activation_type"], c.get("batchnorm", "int8"))]
        c["drop_points"] = 100 * (fp32_acc - c["select_accuracy"])
    ok = [c for c in cands if c["drop_points"] <= bound + 1e-9 and c["speedup_b64"] > min_speedup]
    rec = {"select_accuracy_fp32": fp32_acc, "fp32_bytes": fp32_file.stat().st_size,
           "fp32_images_per_s_b64": SPEED_BATCH / secs["fp32"], "bound_points": bound,
           "min_speedup": min_speedup, "candidates": cands}
    if skipped:
        rec["skipped_calibrations"] = skipped
    for c in cands:
        bn = f" BN {c['batchnorm']}" if "batchnorm" in c else ""
        rr = ", 7-bit weights" if c["reduce_range"] else ""
        log(f"quantize: {name} {c['activation_type']}/{c['calibration']}{bn}{rr}: select {100 * c['select_accuracy']:.2f}% "
            f"(fp32 {100 * fp32_acc:.2f}%), {c['speedup_b64']:.2f}x fp32 at batch {SPEED_BATCH}")
    if not ok:
        rec["why"] = _why_none(cands, bound, min_speedup)
        return None, rec
    best = choose(ok)
    rec.update({k: best[k] for k in ("activation_type", "weight_type", "reduce_range", "calibration", "speedup_b64",
                                     "batchnorm") if k in best}, select_accuracy_int8=best["select_accuracy"])
    return files[(best["activation_type"], best["calibration"], best.get("batchnorm", "int8"), best["reduce_range"])], rec


def select_data(root: Path, entries: dict, run, policy: Policy, calib: int | None, log=print,
                int8: bool = True) -> tuple:
    """What quantization and the runtime choice score with: (calib images, calibration inputs, select
    inputs, select labels, each fp32 file's select outputs, the Scorer); `int8`: check the quantizer's
    dependencies first."""
    try:
        if int8:
            import onnxruntime.quantization  # noqa: F401
            import sympy  # noqa: F401  (quant_pre_process's symbolic shape inference)
    except ImportError as e:
        raise MoskdError(f"int8 quantization needs onnx, onnxruntime and sympy ({e}): pip install -e '.[quantize]'"
                         ) from None
    splits = run_splits(run)
    card = run.card
    train_x = normalize(splits["train"][0], card["mean"], card["std"])
    if calib is None:
        calib = min(DEFAULT_CALIB, len(train_x))
    if calib > len(train_x):
        raise MoskdError(f"--calib {calib}: the run's train split has only {len(train_x)} images; "
                         f"pass --calib {len(train_x)} or fewer")
    log(f"quantize: calibrating on {calib} train images")
    sel_x = normalize(splits["select"][0], card["mean"], card["std"])
    sel_y = splits["select"][1]
    fp32 = {n: outputs(session(root / e["file"]), sel_x) for n, e in entries.items()}
    return calib, train_x[:calib], sel_x, sel_y, fp32, Scorer(sel_x, sel_y, fp32, policy)


def quantize_bundle(root: Path, entries: dict, run, policy: Policy, *, calib: int | None = None,
                    bound: float = DEFAULT_BOUND, min_speedup: float = DEFAULT_MIN_SPEEDUP, log=print
                    ) -> tuple[dict, Policy]:
    """Quantize the fp32 ONNX files of a bundle being written in `root`; `entries` maps each model's
    name to its manifest entry ("file", "bytes", ...) and is updated in place. Returns the bundle-wide
    record for the manifest's "quantization" key and the policy the bundle deploys: the run's, with
    its deferral thresholds refitted on the deployed models' `select` outputs (the selector's held-out
    part, where the run chose them)."""
    calib, calib_x, sel_x, sel_y, fp32, scorer = select_data(root, entries, run, policy, calib, log)
    card = run.card
    int8 = {}
    with tempfile.TemporaryDirectory(dir=root, prefix=".quant.") as work:
        work = Path(work)
        # the classifiers first, the selector last: all are scored against fp32 neighbours
        for name in [n for n in entries if n != "selector"] + (["selector"] if "selector" in entries else []):
            e = entries[name]
            chosen, rec = quantize_model(name, root / e["file"], work, calib_x, scorer, bound=bound,
                                         min_speedup=min_speedup, log=log)
            if chosen is None:
                e.update(precision="fp32", quantization=rec)
                log(f"quantize: {name} stays fp32: {rec['why']}")
                continue
            file = f"{name}.int8.onnx"
            os.replace(chosen, root / file)
            (root / e["file"]).unlink()
            e.update(file=file, bytes=(root / file).stat().st_size, precision="int8", quantization=rec)
            int8[name] = outputs(session(root / file), sel_x)
            log(f"quantize: {name} -> {file} ({rec['activation_type']}/{rec['calibration']}, "
                f"{e['bytes'] / rec['fp32_bytes']:.2f}x the bytes, {rec['speedup_b64']:.2f}x fp32)")
    # the routing rule re-checked on the deployed (int8 where chosen) models' select outputs, then its
    # thresholds refitted there (quantization moves confidences), on the images the run chose them on
    deployed = {**fp32, **int8}
    acc32, r32 = scorer.routed(fp32.get("selector"), fp32)
    acc8, r8 = scorer.routed(deployed.get("selector"), deployed)
    refit, refit_rec = refit_thresholds(policy, {k: v for k, v in deployed.items() if k != "selector"},
                                        deployed.get("selector"), sel_y, card.get("heldout_index"))
    if refit_rec["refit"]:
        log(f"quantize: routing refitted on the deployed models' select outputs: {refit_rec['before']['policy']} "
            f"-> {refit_rec['after']['policy']}")
    return {"mode": "int8", "format": "QDQ", "per_channel": True, "calib_split": "train", "calib_images": calib,
            "bound_points": bound, "min_speedup": min_speedup,
            "candidates": [f"{a}/{m}{'/7-bit weights' if rr else ''}" for m in METHODS for a, rr in CANDIDATE_GRAPHS],
            "batchnorm": "unfolded BatchNormalization nodes, where a model has them, tried int8 and fp32",
            "speed": f"images/s at batch {SPEED_BATCH}, {SPEED_THREADS} threads, side by side with fp32",
            "routing_recheck_select": {"routed_accuracy_fp32": acc32, "routed_accuracy_deployed": acc8,
                                       "route_agreement": float((r32 == r8).mean()),
                                       "route_share_deployed": dict(zip(policy.models, (
                                           np.bincount(r8, minlength=len(policy.models)) / len(r8)).tolist()))},
            "routing_refit_select": refit_rec}, refit


