"""Every runtime and precision of a bundle's models, side by side in one run: milliseconds per batch and
the ratio to onnxruntime fp32, per model and for the routed system.

    python benchmarks/bench_runtime.py BUNDLE [--threads 2] [--rounds 5] [--min-s 0.2] [--batches 1 64]
                                       [--gather 16 ...] [--run-dir RUN --out DIR]

Columns: ORT fp32, ORT int8, OV fp32, OV bf16, OV int8 (OV: OpenVINO), then the bundle as chosen at
export (its manifest). All programs of all columns and batch sizes are timed in the same rounds, in a
fresh shuffled order each round (medians). A cell is "—" where this host cannot run it (the reason is
printed below the table): no int8 file kept for the model, no OpenVINO, no native bf16, a graph
OpenVINO refuses. A routed row runs the whole bundle in that column's runtime/precision (a model with
no int8 file runs its fp32 file there), over the test set's first 512 images (a whole window if
larger) batch by batch (inference/routed_timing.py: one batch's deferrals say little), in ms per batch; "routed xG" runs the same batches G at a time, as
`moskd serve --gather G` does under a backlog (every model call still at most one batch). Inputs: with
--run-dir, the run's test images, since a routed system's deferrals depend on them; else random images
(every image then defers, so the routed row runs every model). With --run-dir and --out it also writes
the deployment report (inference/deploy_report.py) of the bundle as chosen into DIR.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.bundle import Bundle, entry_files, load_bundle  # noqa: E402
from inference.config import SERVING_GATHER  # noqa: E402
from inference.int8_report import programs  # noqa: E402
from inference.quantize_tools import side_by_side  # noqa: E402
from inference.routed_timing import gathered, one_at_a_time, routed_sample  # noqa: E402
from inference.runtimes import RuntimeUnavailable, native_bf16, open_program, openvino_missing  # noqa: E402

COLUMNS = ("onnxruntime/fp32", "onnxruntime/int8", "openvino/fp32", "openvino/bf16", "openvino/int8")
SHORT = {"onnxruntime": "ORT", "openvino": "OV"}
ONE_STREAM = "openvino/int8 one stream"  # OV int8 without cutting large batches across streams: what that brings


def _label(k: str) -> str:
    rt, pr = k.split("/")
    return f"{SHORT[rt]} {pr}"


def open_all(bundle: Bundle, threads: int) -> tuple[dict, dict]:
    """{(model, column): program} and {(model, column): why not}."""
    progs, why = {}, {}
    ents = {**({"selector": bundle.manifest["selector"]} if bundle.manifest.get("selector") else {}),
            **{e["name"]: e for e in bundle.manifest["models"]}}
    for name, e in ents.items():
        files = entry_files(e)
        for col in COLUMNS:
            rt, pr = col.split("/")
            file = files.get("fp32" if pr == "bf16" else pr)
            if file is None:
                why[(name, col)] = f"no {pr} file in the bundle"
            elif pr == "bf16" and not native_bf16():
                why[(name, col)] = "no native bf16 on this CPU"
            else:
                try:
                    progs[(name, col)] = open_program(bundle.root / file, rt, pr, threads)
                except RuntimeUnavailable as ex:
                    why[(name, col)] = str(ex)
                    continue
                if rt == "openvino" and pr == "int8" and progs[(name, col)].parts:
                    one = open_program(bundle.root / file, rt, pr, threads)
                    one.parts = []  # every batch whole on the one-stream compilation
                    progs[(name, ONE_STREAM)] = one
    return progs, why


def routed_systems(root: str, threads: int, why: dict, max_call: int | None = None) -> dict:
    out = {"chosen": load_bundle(root, threads, max_call=max_call)}
    for col in COLUMNS:
        if col.startswith("openvino") and openvino_missing() or (col.endswith("bf16") and not native_bf16()):
            continue
        if any(c == col and "openvino cannot" in w for (_, c), w in why.items()):
            continue  # a model OpenVINO refuses: the forced bundle would fall back, not measure the column
        out[col] = load_bundle(root, threads, force=col, max_call=max_call)
    return out


def _entry(bundle: Bundle, name: str) -> dict:
    return bundle.manifest["selector"] if name == "selector" else next(
        e for e in bundle.manifest["models"] if e["name"] == name)


def input_images(run_dir: str | None, bundle: Bundle) -> np.ndarray:
    """The run's test images (routing depends on them: noise would defer every image), else noise."""
    if run_dir:
        from inference.quantize_tools import run_splits
        from inference.router import load_router

        return run_splits(load_router(run_dir))["test"][0]
    return np.random.default_rng(0).integers(0, 256, (64, *bundle.manifest["input_size"]), dtype=np.uint8)


def print_table(secs: dict, calls: dict, batches) -> dict:
    """The markdown table (ms per batch and ratio to ORT fp32); returns {model: {batch: {column: ms}}}."""
    print("| model | batch | " + " | ".join(_label(c) for c in COLUMNS) + " | as chosen |")
    print("|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    table = {}
    for name in dict.fromkeys(n for n, _, _ in calls):
        for bs in batches:
            base = secs.get((name, "onnxruntime/fp32", bs))
            if base is None and secs.get((name, "chosen", bs)) is None:
                continue  # a row timed at other batches only (the gathered one)
            cells = []
            for col in [*COLUMNS, "chosen"]:
                s = secs.get((name, col, bs))
                cells.append("—" if s is None else f"{1000 * s:.2f} ({base / s:.2f}x)")
                if s is not None:
                    table.setdefault(name, {}).setdefault(str(bs), {})[col] = 1000 * s
            print(f"| {name} | {bs} | " + " | ".join(cells) + " |")
    return table


def paired_ratios(rounds: dict, batches, gather_rows: list[str]) -> dict:
    """ORT fp32 over "as chosen", round by round (both ran in every round): the spread says whether a
    ratio stands above the machine's noise. For the gathered row, also against ORT fp32 routed one
    batch at a time (how the bundle served before --gather)."""
    out, lines = {}, []
    pairs = [(name, name, name) for name in dict.fromkeys(n for n, _, _ in rounds)]
    pairs += [(f"{row} vs routed", "routed", row) for row in gather_rows]
    for label, base_row, row in pairs:
        for bs in batches:
            base, got = rounds.get((base_row, "onnxruntime/fp32", bs)), rounds.get((row, "chosen", bs))
            if not base or not got:
                continue
            r = sorted(b / c for b, c in zip(base, got))
            out.setdefault(label, {})[str(bs)] = r
            lines.append(f"as chosen vs ORT fp32, {label} at batch {bs}, paired per round: median "
                         f"{statistics.median(r):.2f}x, min {r[0]:.2f}x, max {r[-1]:.2f}x ({len(r)} rounds)")
    return {"ratios": out, "lines": lines}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-s", type=float, default=0.2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--gather", type=int, nargs="+", default=[SERVING_GATHER],
                   help="batches per window of a gathered routed row, one row each, timed side by side "
                        "(moskd serve --gather; default %(default)s)")
    p.add_argument("--run-dir", default=None, help="the run the bundle came from: its test images are the inputs "
                   "(else random images, which a routed system defers), and with --out the deployment report")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    bundle = load_bundle(a.bundle, a.threads)
    progs, why = open_all(bundle, a.threads)
    systems = routed_systems(a.bundle, a.threads, why)
    images = input_images(a.run_dir, bundle)
    chosen = programs(systems["chosen"])
    gather_rows = {g: f"routed x{g}" for g in a.gather if g > 1}
    calls, batches_per_call = {}, {}
    for bs in a.batches:
        u8 = np.ascontiguousarray(np.resize(images, (bs, *images.shape[1:])))
        x = np.ascontiguousarray(bundle.normalize(u8))
        for (name, col), prog in [*progs.items(), *(((n, "chosen"), p) for n, p in chosen.items())]:
            calls[(name, col, bs)] = (lambda prog=prog, x=x: prog(x))
        sample = routed_sample(images, bs, at_least=bs * max(gather_rows, default=1))
        for col, b in systems.items():
            calls[("routed", col, bs)], batches_per_call[("routed", col, bs)] = one_at_a_time(b, sample, bs)
        if bs >= 16 and gather_rows:  # below that, a server's batches are too small to gather anything
            for col, b in routed_systems(a.bundle, a.threads, why, max_call=bs).items():
                for g, row in gather_rows.items():
                    calls[(row, col, bs)], batches_per_call[(row, col, bs)] = gathered(b, sample, bs, g)
    rounds = side_by_side(calls, rounds=a.rounds, min_s=a.min_s, per_round=True)
    rounds = {k: [t / batches_per_call.get(k, 1) for t in v] for k, v in rounds.items()}  # seconds per batch
    secs = {k: statistics.median(v) for k, v in rounds.items()}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"{a.bundle}: {cpu}, {a.threads} threads, median of {a.rounds} rounds, ms per batch (ratio to ORT fp32)")
    table = print_table(secs, calls, a.batches)
    choice = {e.get("name", "selector"): f"{e.get('runtime', 'onnxruntime')}/{e.get('precision', 'fp32')}"
              for e in [bundle.manifest.get("selector"), *bundle.manifest["models"]] if e}
    print("as chosen: " + ", ".join(f"{n} {c}" + (f" (batch <= {e['small_batch']['up_to']}: "
                                                  f"{e['small_batch']['runtime']}/{e['small_batch']['precision']})"
                                                  if (e := _entry(bundle, n)).get("small_batch") else "")
                                    for n, c in choice.items()))
    for (name, col), w in sorted(why.items()):
        print(f"— {name} {_label(col)}: {w}")
    for (name, col, bs), s in secs.items():
        if col == ONE_STREAM and bs >= progs[(name, "openvino/int8")].SPLIT_MIN:
            base = secs[(name, "onnxruntime/fp32", bs)]
            print(f"OV int8 on one stream (the whole batch on {a.threads} threads), {name} at batch {bs}: "
                  f"{1000 * s:.2f} ms ({base / s:.2f}x ORT fp32; the OV int8 column: "
                  f"{base / secs[(name, 'openvino/int8', bs)]:.2f}x)")
    paired = paired_ratios(rounds, a.batches, list(gather_rows.values()))
    for line in paired["lines"]:
        print(line)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "bench_runtime.json").write_text(json.dumps(
            {"cpu": cpu, "threads": a.threads, "rounds": a.rounds, "gather": a.gather, "ms_per_batch": table,
             "chosen": choice,
             "as_chosen_vs_ort_fp32_per_round": paired["ratios"],
             "unavailable": {f"{n} {c}": w for (n, c), w in why.items()}}, indent=1))
        if a.run_dir:
            from inference.deploy_report import deployment_report

            print(deployment_report(a.run_dir, a.bundle, rounds=a.rounds, min_s=a.min_s, threads=a.threads,
                                    out=a.out))


if __name__ == "__main__":
    main()
