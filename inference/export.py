"""`moskd export`: a finished run as a deployment bundle (DESIGN.md, "Deployment bundle").

It lives in the inference stage, not in moskd, because it exports the stage-4 router (moskd
imports no stage).

    moskd export --run-dir RUN --out DIR [--format torch|onnx] [--fast fold|eager]
    moskd export --run-dir RUN --out DIR --quantize int8 [--calib N] [--report]
    moskd export --run-dir RUN --out DIR --runtime auto|ort|openvino --precision auto|fp32|bf16|int8 [--report]
    moskd export --retune DIR [--runtime ...] [--precision ...]

Writes DIR/manifest.json (class names, input size, mean/std, each model's file, MACs and
parameters, and the run's routing policy, RUN/policy.json, verbatim under "policy") and one file
per model the policy can run: the selector when it starts there (with its sigmoid, so it answers
scores in [0, 1]), the students, and the teacher when a deferral step reaches it. Each model is exported on its own with a dynamic batch size,
as a `torch.export` program (`.pt2`, torch.export.save) or as ONNX (`.onnx`, the dynamo-based
torch.onnx exporter); the routing stays in inference/bundle.py, a small host runtime that reads
the manifest. Models get the selector card's normalisation baked in (as the run's router does) and
their Conv+BN pairs folded (--fast fold, the default); each exported program is checked against
the eager model on a random batch before the manifest is written, and the largest difference is
recorded in the manifest. The manifest is written last, so a half-written bundle never loads.

--runtime/--precision (inference/tune.py) choose each ONNX model's runtime (onnxruntime or OpenVINO)
and precision (fp32, bf16, int8) on this host by measurement, per batch regime, within --int8-bound
points on `select`, never slower than onnxruntime fp32; the bundle keeps the fp32 and int8 files, the
manifest the figures; --retune re-times an exported bundle on another host. The bundle folder is
swapped in whole (moskd.atomic.swap_folder): a kill leaves the old bundle or the new one.

--quantize int8 (inference/quantize.py) replaces each ONNX model by its static int8 graph where that
is faster and within --int8-bound points on `select`, then refits the routing policy's deferral
thresholds on the deployed models' `select` outputs (same rule, same choosing images and target as
the run's fit; the manifest keeps both); --report adds the int8-against-fp32
comparison to the bundle (inference/int8_report.py): int8_report.md (per model and for the routed
system: test and select accuracy of both with a paired-bootstrap CI, bytes, latency at batch 1 and
64 timed side by side, the compression table's fp32 and int8 rows), int8_report.json, and the
per-image outputs int8_eval_{select,test}.npz.
"""
from __future__ import annotations

import contextlib
import copy
import io
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from inference.deploy_report import deployment_report
from inference.bundle import FORMAT_VERSION, MANIFEST
from moskd.ort import ort_session
from inference.int8_report import compare_bundles, write_int8_report
from inference.onnx_pools import fix_file
from inference.quantize import DEFAULT_BOUND, DEFAULT_MIN_SPEEDUP, quantize_bundle
from inference.quantize_tools import SPEED_THREADS
from inference.router import load_router, selector_policy  # the stage-4 loader: card checks, route order, adapters
from inference.tune import retune_bundle, tune_bundle
from moskd.atomic import recover_folder, swap_folder, write_json
from moskd.errors import MoskdError
from moskd.fold import FastPath, fast_model
from moskd.models import unwrap
from moskd.profile import count_macs, count_params
from moskd.run import RunDir
from moskd.teacher_export import export_onnx_teacher, is_onnx_teacher

CHECK_ATOL = 1e-4
REPORT_ROUNDS = 5  # timing rounds of --report's side-by-side latency (medians)


class Scores(nn.Module):
    """The selector as the router uses it: sigmoid of its logits, P(student right)."""

    def __init__(self, selector: nn.Module):
        super().__init__()
        self.selector = selector

    def forward(self, x):
        return self.selector(x).float().sigmoid()


def _export_torch(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; fail with the fix, not a traceback)
    except ImportError:
        raise MoskdError("--format onnx needs onnx and onnxscript: pip install -e '.[onnx]'") from None
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                          input_names=["x"], output_names=["y"], external_data=False, verbose=False)
    fix_file(path)  # ceil-mode pools that overhang a small map, which OpenVINO refuses (inference/onnx_pools.py)


def _check(path: Path, fmt: str, model: nn.Module, x: torch.Tensor) -> float:
    """Largest |exported - eager| on `x`: the exported file is what the bundle will run."""
    with torch.inference_mode():
        want = model(x).float()
    if fmt == "torch":
        with torch.inference_mode():
            got = torch.export.load(str(path)).module()(x).float()
    else:
        sess = ort_session(path)  # checked in the session the bundle will run it in
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    return float((want - got).abs().max())


def _load(run_dir: Path, fmt: str, log):
    """The run's router for the export, and say what the bundle will route with."""
    run = load_router(run_dir, "cpu")
    policy = run.router.policy
    if not RunDir(run_dir).report().policy.is_file():
        log(f"export: {RunDir(run_dir).report().policy} not found; the bundle routes with the selector alone "
            f"(run moskd policy --run-dir {run_dir} to fit the full policy)")
    if fmt == "torch" and is_onnx_teacher(run.teacher) and len(run.students) in policy.used():  # issue 28
        log("export: the teacher is an imported ONNX file and cannot be exported to torch; the bundle holds the "
            "rest and routes with the selector alone (--format onnx keeps the teacher)")
        run = load_router(run_dir, "cpu", policy=selector_policy(run.card, run.students, float(policy.macs[-1])))
    return run


def _entries(run, size: list[int]) -> list[tuple[str, nn.Module, dict]]:
    """(name, module, manifest fields) of every program the bundle holds: the selector when the policy
    starts from it, and each model the policy can run."""
    policy = run.router.policy
    entries = []
    if policy.selector:
        sel = run.router.selector
        entries.append(("selector", Scores(sel), {"arch": run.selector_card["arch"], "macs": count_macs(sel, size),
                                                  "params": count_params(sel)}))
    used = policy.used()
    for k, name in enumerate(policy.models):
        if k in used:
            model = run.router.models[k]
            card = run.teacher_card if name == policy.models[-1] else run.students[k].card
            entries.append((name, model, {"name": name, "arch": card["arch"], "macs": int(policy.macs[k]),
                                          "params": count_params(unwrap(model))}))
    return entries


def _write_programs(entries, tmp: Path, out: Path, fmt: str, path: FastPath, size: list[int], log) -> dict:
    """Each entry as a program file in `tmp`, checked against its module; {name: manifest entry}."""
    example = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    check = torch.randn(5, *size, generator=torch.Generator().manual_seed(1))
    suffix = ".pt2" if fmt == "torch" else ".onnx"
    done = {}
    for name, model, meta in entries:
        file = f"{name}{suffix}"
        log(f"export: {name} -> {out / file}")
        if is_onnx_teacher(model):  # issue 28: its own graph, joined with its input conversion
            export_onnx_teacher(model.eval(), example, tmp / file)
        else:
            model = fast_model(model.eval(), example, path)
            (_export_torch if fmt == "torch" else _export_onnx)(model, example, tmp / file)
        diff = _check(tmp / file, fmt, model, check)
        if diff > CHECK_ATOL:
            raise MoskdError(f"{name}: the exported program differs from the model by {diff:.2e} "
                             f"(> {CHECK_ATOL}); try --fast eager or the other --format")
        done[name] = {**meta, "file": file, "bytes": (tmp / file).stat().st_size, "max_abs_diff": diff}
    return done


def _manifest(run, run_dir: Path, fmt: str, path: FastPath, done: dict, policy, quant: dict | None = None) -> dict:
    card = run.card
    m = {"format_version": FORMAT_VERSION, "format": fmt, "dataset": card["dataset"],
         "class_names": run.class_names, "input_size": list(card["input_size"]),
         "mean": list(card["mean"]), "std": list(card["std"]),
         "selector": done.get("selector"), "students": run.router.names,
         "models": [done[name] for name in policy.models if name in done],
         "policy": policy.to_dict(),
         "fast_path": str(path),
         "source": {"run_dir": str(run_dir.resolve()), "torch": torch.__version__}}
    return m if quant is None else {**m, "quantization": quant}


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "torch", fast: str = "fold", force: bool = False,
               log=print, quantize: str | None = None, calib: int | None = None, int8_bound: float = DEFAULT_BOUND,
               int8_min_speedup: float = DEFAULT_MIN_SPEEDUP, report: bool = False, report_rounds: int = REPORT_ROUNDS,
               report_min_s: float = 0.2, runtime: str | None = None, precision: str | None = None) -> dict:
    """Write the bundle; returns the manifest. With `quantize` and `report`, the bundle also holds the
    int8-against-fp32 comparison (inference/int8_report.py). With `runtime`/`precision` ("auto", ...),
    each ONNX model's runtime and precision are chosen on this host (inference/tune.py); `report` then
    writes the deployment report (inference/deploy_report.py)."""
    run_dir, out = Path(run_dir), Path(out)
    if runtime or precision:
        fmt, runtime, precision = "onnx", runtime or "auto", precision or "auto"
    done_before = recover_folder(out)
    if done_before:
        log(f"export: {done_before}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise MoskdError(f"{out} already exists and is not empty; pass --force to replace it or choose another --out")
    if quantize and fmt != "onnx":
        raise MoskdError("--quantize int8 writes ONNX models; pass --format onnx")
    run = _load(run_dir, fmt, log)
    policy, size, path = run.router.policy, list(run.card["input_size"]), FastPath.parse(fast)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    fp32_dir = None
    try:
        done = _write_programs(_entries(run, size), tmp, out, fmt, path, size, log)
        quant = rt_rec = None
        if runtime:
            rt_rec, policy = tune_bundle(tmp, done, run, policy, runtime=runtime, precision=precision, calib=calib,
                                         bound=int8_bound, log=log)
        elif quantize:  # the fp32 files are written and checked; int8 replaces those it beats
            if report:  # keep the fp32 bundle aside: the int8 one is compared with it, then it goes
                fp32_dir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.fp32.", suffix=".tmp"))
                for e in done.values():
                    shutil.copyfile(tmp / e["file"], fp32_dir / e["file"])
                write_json(fp32_dir / MANIFEST, _manifest(run, run_dir, fmt, path, copy.deepcopy(done), policy))
            quant, policy = quantize_bundle(tmp, done, run, policy, calib=calib, bound=int8_bound,
                                            min_speedup=int8_min_speedup, log=log)
        manifest = _manifest(run, run_dir, fmt, path, done, policy, quant)
        if rt_rec is not None:
            manifest["runtime"] = rt_rec
        write_json(tmp / MANIFEST, manifest)
        if rt_rec is not None and report:
            log(deployment_report(run_dir, tmp, name=out, rounds=report_rounds, min_s=report_min_s, run=run))
        if fp32_dir is not None:
            log(f"export: int8 against fp32 on select and test, latency at batch 1 and 64 ({SPEED_THREADS} threads)")
            rep, arrays = compare_bundles(run_dir, fp32_dir, tmp, rounds=report_rounds, threads=SPEED_THREADS,
                                          min_s=report_min_s, run=run)
            rep.update(fp32_bundle="the fp32 ONNX export of the same run, written aside at export and removed",
                       int8_bundle=str(out))
            log(write_int8_report(tmp, rep, arrays))
        swap_folder(tmp, out)  # the old bundle or the new one under `out` at every moment (moskd.atomic)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fp32_dir is not None:
            shutil.rmtree(fp32_dir, ignore_errors=True)
    return manifest


def export_command(a) -> None:
    """`moskd export` once its flags are parsed and checked (inference.cli.export_main; a: ExportConfig)."""
    if a.retune:
        m = retune_bundle(a.retune, a.runtime, a.precision)
        print(f"rewrote {a.retune}/{MANIFEST}: " + _choices(m))
        return
    m = export_run(a.run_dir, a.out, a.format, a.fast, a.force, quantize=a.quantize, calib=a.calib,
                   int8_bound=a.int8_bound, int8_min_speedup=a.int8_min_speedup, report=a.report,
                   runtime=a.runtime, precision=a.precision)
    files = [*m["models"], *([m["selector"]] if m["selector"] else [])]
    print(f"wrote {a.out}/{MANIFEST} and {len(files)} {a.format} programs "
          f"({sum(e['bytes'] for e in files) / 1e6:.1f} MB); policy {m['policy']['family']}")
    if a.quantize:
        print("precision: " + ", ".join(f"{e.get('name', 'selector')} {e['precision']}" for e in files)
              + f" (calibrated on {m['quantization']['calib_images']} train images)")
    if a.runtime:
        print("runtime: " + _choices(m))


def _choices(m: dict) -> str:
    """One line: each model's serving-batch choice (and its batch-1 one where that differs)."""
    parts = []
    for e in [*([m["selector"]] if m.get("selector") else []), *m["models"]]:
        small = e.get("small_batch")
        parts.append(f"{e.get('name', 'selector')} {e['runtime']}/{e['precision']}"
                     + (f" (batch <= {small['up_to']}: {small['runtime']}/{small['precision']})" if small else ""))
    return ", ".join(parts)

