"""Runtime and precision per model (inference/runtimes.py, inference/tune.py): the candidates a host
offers, the chooser's rule on synthetic figures, `moskd export --runtime/--precision` on a tiny run
(choice and figures in the manifest, an OpenVINO bundle's labels, the fallback without OpenVINO and its
one warning line), --retune, the atomic bundle swap, and a calibration method that cannot calibrate.

No speed is asserted: timings decide the choice, so tests read the choice against the recorded
figures, or feed the chooser numbers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import runtimes, tune
from moskd import atomic as swap
from inference.bundle import entry_files, load_bundle
from inference.export import export_run
from inference.cli import export_main
from inference.config import SERVING_BATCH
from inference.runtimes import BASELINE, candidates, choose
from moskd.data import load_data
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")
FILES = {"fp32": "m.onnx", "int8": "m.int8.onnx"}
BF16 = {"avx512f", "avx512_bf16"}
SERVE = f"b{SERVING_BATCH}"


def _no_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError


# ---------------------------------------------------------------- candidates and the chooser


def test_candidates_with_openvino_and_native_bf16():
    got, dropped = candidates(FILES, flags=BF16)
    assert set(got) == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                        ("openvino", "bf16"), ("openvino", "int8")}
    assert set(dropped) == {"onnxruntime/bf16"}


def test_bf16_only_where_the_cpu_flags_say_so():
    got, dropped = candidates(FILES, flags={"avx512f", "avx512_vnni"})
    assert ("openvino", "bf16") not in got and "native bf16" in dropped["openvino/bf16"]
    assert ("openvino", "bf16") in candidates(FILES, flags={"amx_bf16"})[0]
    assert runtimes.native_bf16({"avx512_bf16"}) and not runtimes.native_bf16({"avx2"})


def test_without_openvino_only_onnxruntime_is_measured_and_the_reason_is_kept(monkeypatch):
    _no_openvino(monkeypatch)
    got, dropped = candidates(FILES, flags=BF16)
    assert got == [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert all("openvino is not installed" in dropped[f"openvino/{p}"] for p in ("fp32", "bf16", "int8"))


def test_flags_narrow_the_candidates_but_the_baseline_stays():
    got, dropped = candidates(FILES, runtime="openvino", precision="int8", flags=BF16)
    assert got == [("onnxruntime", "fp32"), ("openvino", "int8")]
    assert dropped["onnxruntime/int8"] == "--runtime openvino" and dropped["openvino/bf16"] == "--precision int8"
    got, dropped = candidates({"fp32": "m.onnx"}, int8_why="no int8 file: loses 2 points", flags=BF16)
    assert ("onnxruntime", "int8") not in got and dropped["openvino/int8"] == "no int8 file: loses 2 points"


def _fig(drop, b1, bs):
    return {"drop_points": drop, "ms": {"b1": b1, SERVE: bs}}


def test_the_chooser_takes_the_fastest_within_the_bound_and_never_anything_slower_than_ort_fp32():
    figures = {BASELINE: _fig(0.0, 1.0, 20.0), "openvino/int8": _fig(0.5, 0.8, 5.0),  # fastest but too lossy
               "openvino/bf16": _fig(0.1, 1.2, 9.0), "onnxruntime/int8": _fig(0.0, 0.5, 10.0)}
    best, why = choose(figures, 0.3, SERVE)
    assert best == "openvino/bf16" and "loses 0.50 points" in why["openvino/int8"]
    assert "slower than openvino/bf16" in why["onnxruntime/int8"]
    best, why = choose(figures, 0.3, "b1")
    assert best == "onnxruntime/int8" and "not faster than" in why["openvino/bf16"]
    assert choose(figures, 1.0, SERVE)[0] == "openvino/int8"


def test_the_chooser_keeps_ort_fp32_when_nothing_beats_it_or_nothing_was_measured():
    slow = {BASELINE: _fig(0.0, 1.0, 10.0), "openvino/fp32": _fig(0.0, 1.5, 10.0), "openvino/int8": _fig(None, .1, 1)}
    best, why = choose(slow, 0.3, SERVE)
    assert best == BASELINE and set(why) == {"openvino/fp32", "openvino/int8"}
    assert "no select accuracy" in why["openvino/int8"]
    rng = np.random.default_rng(0)
    for _ in range(200):  # random figures: the choice is never slower than the baseline, never out of bound
        figs = {BASELINE: _fig(0.0, *rng.uniform(0.1, 2, 2))}
        for k in ("openvino/fp32", "openvino/bf16", "openvino/int8", "onnxruntime/int8"):
            figs[k] = _fig(float(rng.uniform(-0.5, 1.0)), *rng.uniform(0.1, 2, 2))
        for regime in ("b1", SERVE):
            k, _ = choose(figs, 0.3, regime)
            assert figs[k]["ms"][regime] <= figs[BASELINE]["ms"][regime] and figs[k]["drop_points"] <= 0.3
            assert all(figs[o]["ms"][regime] >= figs[k]["ms"][regime] for o in figs
                       if figs[o]["drop_points"] <= 0.3 and o != k)


# ---------------------------------------------------------------- export on a tiny run


@pytest.fixture(scope="module")
def tuned(trained_run, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("tuned") / "bundle"
    mp = pytest.MonkeyPatch()
    mp.setattr(tune, "ROUNDS", 1)
    mp.setattr(tune, "MIN_S", 0.002)
    try:
        m = export_run(trained_run, out, runtime="auto", precision="auto", calib=64, int8_bound=100,
                       log=lambda *_: None)
    finally:
        mp.undo()
    return out, m


def _entries(m):
    return [e for e in [m.get("selector"), *m["models"]] if e]


def test_the_manifest_records_each_models_choice_and_figures(tuned):
    out, m = tuned
    assert m["runtime"]["flags"] == {"runtime": "auto", "precision": "auto"} and "cpu" in m["runtime"]["host"]
    for e in _entries(m):
        rec = e["runtime_choice"]
        assert (out / e["files"]["fp32"]).is_file() and (out / e["file"]).is_file()
        assert f"{e['runtime']}/{e['precision']}" == rec["chosen"][SERVE]
        figs = rec["candidates"]
        assert BASELINE in figs and all({"b1", SERVE} <= set(f["ms"]) for f in figs.values())
        for regime in ("b1", SERVE):  # the recorded choice is the chooser's on the recorded figures
            assert choose(figs, rec["bound_points"], regime)[0] == rec["chosen"][regime]
            assert set(rec["why_not"][regime]) == set(figs) - {rec["chosen"][regime]}
        if not runtimes.openvino_missing() and runtimes.native_bf16():
            assert "openvino/bf16" in figs or "openvino/bf16" in rec["unavailable"]
    assert "routing_refit_select" in m["runtime"]


def _labels(b, images):
    return np.concatenate([b.run(images[i:i + 64]).logits.argmax(1) for i in range(0, len(images), 64)])


def _as_openvino(out: Path, tmp_path: Path) -> Path:
    """The tuned bundle with every model's choice set to openvino/fp32 (a host where it won)."""
    import shutil

    dst = tmp_path / "ov"
    shutil.copytree(out, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for e in _entries(m):
        e.update(runtime="openvino", precision="fp32", file=e["files"]["fp32"])
        e.pop("small_batch", None)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_an_openvino_bundle_answers_as_onnxruntime_within_the_measured_agreement(tuned, tmp_path):
    pytest.importorskip("openvino")
    out, m = tuned
    ov = load_bundle(_as_openvino(out, tmp_path))
    assert not ov.fallbacks and type(ov.programs[0]).__name__ == "OpenVinoProgram"
    base = load_bundle(out, force=BASELINE)
    images = load_data("digits").splits["test"].images.numpy()[:300]
    agree = float((_labels(ov, images) == _labels(base, images)).mean())
    measured = min(e["runtime_choice"]["candidates"]["openvino/fp32"]["select_agreement_with_ort_fp32"]
                   for e in _entries(m))
    assert agree >= min(measured, 0.99) - 0.01, (agree, measured)


def test_without_openvino_the_bundle_runs_onnxruntime_with_one_warning_line(tuned, tmp_path, monkeypatch, capsys):
    out, _ = tuned
    path = _as_openvino(out, tmp_path)
    _no_openvino(monkeypatch)
    b = load_bundle(path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "under onnxruntime instead of openvino" in err[0] and "pip install" in err[0]
    assert len(b.fallbacks) == len(_entries(b.manifest))
    images = load_data("digits").splits["test"].images.numpy()[:100]
    assert (_labels(b, images) == _labels(load_bundle(out, force=BASELINE), images)).all()


def test_retune_re_times_the_bundle_and_keeps_the_export_verdicts(tuned, tmp_path, monkeypatch, capsys):
    import shutil

    out, m = tuned
    dst = tmp_path / "retune"
    shutil.copytree(out, dst)
    monkeypatch.setattr(tune, "ROUNDS", 1)
    monkeypatch.setattr(tune, "MIN_S", 0.002)
    assert export_main(["--retune", str(dst), "--runtime", "ort"]) is None
    assert "rewrote" in capsys.readouterr().out
    r = json.loads((dst / "manifest.json").read_text())
    assert r["runtime"]["retuned"]["flags"]["runtime"] == "ort" and r["policy"] == m["policy"]
    for old, new in zip(_entries(m), _entries(r)):
        assert new["runtime"] == "onnxruntime"
        for k, f in new["runtime_choice"]["candidates"].items():
            assert f["drop_points"] == old["runtime_choice"]["candidates"][k]["drop_points"]
    load_bundle(dst).run(np.zeros((3, *m["input_size"]), dtype=np.uint8))


def test_retune_of_a_bundle_without_a_runtime_choice_is_one_line(trained_run, tmp_path, cli):  # noqa: F811
    export_run(trained_run, tmp_path / "plain", "onnx", log=lambda *_: None)
    code, _, err = cli(export_main, ["--retune", str(tmp_path / "plain")])
    assert code == 2 and "records no runtime choice" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(export_main, ["--retune", str(tmp_path / "plain"), "--out", str(tmp_path / "x")])
    assert code == 2 and "--retune BUNDLE takes only" in err


# ---------------------------------------------------------------- the atomic swap


def _bundle_dir(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(tag)
    return path


@pytest.mark.parametrize("killed_after", [1, 2])
def test_a_kill_during_the_swap_leaves_the_old_bundle_or_the_new_one(tmp_path, monkeypatch, killed_after):
    out = _bundle_dir(tmp_path / "B", "old")
    new = _bundle_dir(tmp_path / ".B.x.tmp", "new")
    real, calls = swap.os.replace, []

    def replace_then_die(a, b):
        real(a, b)
        calls.append(b)
        if len(calls) == killed_after:
            raise KeyboardInterrupt  # the process dies here
    monkeypatch.setattr(swap.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        swap.swap_folder(new, out)
    monkeypatch.setattr(swap.os, "replace", real)
    whole = {p.name: (p / "manifest.json").read_text() for p in tmp_path.iterdir()}
    assert "old" in whole.values() if killed_after == 1 else (out / "manifest.json").read_text() == "new"
    assert swap.recover_folder(out)  # what the next export does first
    assert (out / "manifest.json").read_text() == ("old" if killed_after == 1 else "new")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".B.old")) == []


def test_export_force_swaps_the_new_bundle_in_and_recovers_a_leftover(trained_run, tmp_path):  # noqa: F811
    out = _bundle_dir(tmp_path / "B", "old")
    swap.os.replace(out, tmp_path / ".B.old-123")  # a killed swap's leftover, B missing
    logs = []
    with pytest.raises(Exception, match="already exists"):  # recovered first: B is back and not empty
        export_run(trained_run, out, "onnx", log=logs.append)
    assert (out / "manifest.json").read_text() == "old" and any("restored" in x for x in logs)
    export_run(trained_run, out, "onnx", force=True, log=lambda *_: None)
    assert json.loads((out / "manifest.json").read_text())["format"] == "onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["B"]


# ---------------------------------------------------------------- a calibration that cannot calibrate


def test_a_calibration_method_that_fails_is_skipped_and_recorded(tmp_path, monkeypatch):
    from inference import quantize
    from inference.export import _export_onnx
    from tests.conftest import TinyCNN

    model = TinyCNN(3, width=4, depth=1).eval()
    _export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    real = quantize._quantize

    def entropy_fails(src, dst, reader, act, method, *a, **k):
        if method == "Entropy":
            raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")
        return real(src, dst, reader, act, method, *a, **k)
    monkeypatch.setattr(quantize, "_quantize", entropy_fails)
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    scorer = quantize.Scorer(x, np.zeros(32, dtype=int), {}, None)
    chosen, rec = quantize.quantize_model("m", tmp_path / "m.onnx", tmp_path, x, scorer, bound=100,
                                          min_speedup=0, rounds=1, log=lambda *_: None)
    assert chosen is not None and "Too many bins" in rec["skipped_calibrations"]["Entropy"]
    assert {c["calibration"] for c in rec["candidates"]} == {"MinMax", "Percentile"}


# ---------------------------------------------------------------- the deployment report and the benchmark


def test_deployment_report_compares_the_choice_with_ort_fp32(tuned, trained_run, tmp_path):  # noqa: F811
    from inference.deploy_report import REPORT_JSON, deployment_report

    out, m = tuned
    md = deployment_report(trained_run, out, out=tmp_path, rounds=1, min_s=0.002, threads=1, batches=(8, 16),
                           gather=2)
    r = json.loads((tmp_path / REPORT_JSON).read_text())
    assert set(r["models"]) == {e.get("name", "selector") for e in _entries(m)} and "| routed |" in md
    g = r["routed"]["gathered"]  # gathering only at a serving batch (16 and up), against both ORT fp32 rows
    assert g["gather"] == 2 and list(g["batch"]) == ["16"] and "| routed, 2 batches gathered |" in md
    v = g["batch"]["16"]
    assert v["ratio_to_ort_fp32"] == pytest.approx(v["images_per_s"] / v["images_per_s_ort_fp32"])
    assert v["ratio_to_ort_fp32_one_at_a_time"] == pytest.approx(
        v["images_per_s"] / r["routed"]["batch"]["16"]["images_per_s_ort_fp32"])
    gt = g["test"]  # the gathered windows' answers: the routed system's, whatever the window
    assert gt["batch"] == 16 and gt["label_agreement"] > 0.95 and gt["route_agreement"] > 0.95
    assert gt["accuracy"] == pytest.approx(r["routed"]["test"]["int8"], abs=0.05)
    for name, row in [*r["models"].items(), ("routed", r["routed"])]:
        b = row["batch"]["8"]
        assert b["ratio_to_ort_fp32"] == pytest.approx(b["images_per_s"] / b["images_per_s_ort_fp32"])
        assert row["p50_ms_b1"] > 0 and len(row["test"]["ci95"]) == 2
        assert b["gmacs_per_s"] == pytest.approx(b["images_per_s"] * row["macs_per_image"] / 1e9)
    chosen_all_fp32 = all(f"{e['runtime']}/{e['precision']}" == BASELINE for e in _entries(m))
    assert r["routed"]["test"]["label_agreement"] == 1.0 or not chosen_all_fp32
    assert r["peak_gmacs"]["fp32"] > 0 and r["peak_gmacs"]["int8"] >= r["peak_gmacs"]["fp32"]


def test_bench_runtime_prints_every_column_side_by_side(tuned, capsys):
    from benchmarks.bench_runtime import COLUMNS, main

    out, m = tuned
    main([str(out), "--threads", "1", "--rounds", "1", "--min-s", "0.002", "--batches", "1", "16", "--gather", "2"])
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "| batch |" not in ln]
    # every model and the routed system at both batches, and the routed system gathered at 16
    assert len(rows) == 2 * (len(_entries(m)) + 1) + 1 and rows[-1].startswith("| routed x2 | 16 |")
    assert "as chosen vs ORT fp32, routed x2 vs routed at batch 16, paired per round" in text
    assert all(ln.count("|") == len(COLUMNS) + 4 and "—" not in ln.split("|")[-2] for ln in rows)
    assert "(1.00x)" in rows[0]


def test_small_sub_batches_run_the_batch_1_choice():
    from inference.bundle import _RegimeProgram

    prog = _RegimeProgram(lambda x: np.full((len(x), 1), 64.0), lambda x: np.full((len(x), 1), 1.0), up_to=4)
    assert prog(np.zeros((4, 1))).max() == 1.0 and prog(np.zeros((5, 1))).min() == 64.0


def test_an_openvino_refusal_is_reported_by_its_informative_lines():
    text = ("Exception from src/inference/src/cpp/core.cpp:132:\nCheck 'false' failed at x.cpp:151:\n"
            "-- MaxPool-20 with a message:\nKernel after dilation has size (dim: 2) larger than the data shape "
            "after padding (dim: 1) at axis 0.\n\nSummary:\n-- Conversion is failed for: Conv-20, MaxPool-20\n")
    got = runtimes.ov_reason(text)
    assert "MaxPool-20" in got and "larger than the data shape" in got and "core.cpp" not in got


def test_a_ceil_mode_pool_overhanging_its_map_is_made_explicit_and_openvino_reads_it(tmp_path):
    # GoogLeNet's last MaxPool(2, 2, ceil_mode=True) on Fashion-MNIST's 1x1 map, in miniature: a 3x3/2
    # convolution leaves 1x1, the pool overhangs it (OpenVINO refused this graph); a second pool fits
    from inference.export import _export_onnx
    from inference.onnx_pools import explicit_overhanging_pools
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.MaxPool2d(3, 1, padding=1, ceil_mode=True), torch.nn.Conv2d(1, 4, 3, stride=2),
                                torch.nn.MaxPool2d(2, 2, ceil_mode=True), torch.nn.Flatten()).eval()
    x = torch.randn(3, 1, 3, 3)
    path = tmp_path / "m.onnx"
    _export_onnx(model, x, path)  # the export rewrites the file
    pools = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MaxPool"]
    modes = [next(a.i for a in n.attribute if a.name == "ceil_mode") for n in pools]
    assert modes == [1, 0]  # the pool that fits stays as exported; the overhanging one now pads
    want = model(x).detach().numpy()
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if runtimes.openvino_missing() is None:
        program = runtimes.open_program(path, runtimes.OV, "fp32", threads=1)
        np.testing.assert_allclose(program(x.numpy()), want, rtol=1e-4, atol=1e-5)
    assert explicit_overhanging_pools(onnx.load(str(path))) == 0  # a second pass finds nothing left


@pytest.mark.skipif(runtimes.openvino_missing() is not None, reason="openvino is an optional extra")
def test_openvino_cuts_a_large_batch_across_its_streams_and_answers_as_one_batch(tmp_path):
    from inference.export import _export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    _export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx")
    program = runtimes.open_program(tmp_path / "m.onnx", runtimes.OV, "fp32", threads=2)
    assert len(program.parts) == 2  # one request per stream
    x = torch.randn(37, 1, 8, 8)  # >= SPLIT_MIN and odd: parts of 19 and 18
    calls = []
    for req in program.parts:  # record what each stream is given
        def spy(inputs, *rest, _start=req.start_async):
            calls.append(len(inputs[0]))
            return _start(inputs, *rest)

        req.start_async = spy
    got = program(x.numpy())
    assert sorted(calls) == [18, 19]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(program(x[:3].numpy()), got[:3], rtol=1e-5, atol=1e-6)  # small: the latency path


def test_routed_timing_runs_whole_test_batches_alone_or_a_window_at_a_time():
    from inference.routed_timing import ROUTED_IMAGES, gathered, one_at_a_time, routed_sample

    class Spy:
        def __init__(self, max_call=None):
            self.max_call, self.sizes = max_call, []

        def run(self, x):
            self.sizes.append(len(x))

    images = np.arange(700 * 4, dtype=np.uint8).reshape(700, 1, 2, 2)
    sample = routed_sample(images, 64)
    assert len(sample) == ROUTED_IMAGES == 512 and np.array_equal(sample, images[:512])  # the first whole batches
    assert len(routed_sample(images, 1)) == 64 and len(routed_sample(images, 64, at_least=1024)) == 1024
    few = routed_sample(images[:100], 64)  # fewer test images than wanted: repeated, in order
    assert len(few) == 512 and np.array_equal(few[100:200], images[:100])
    alone, spy = Spy(), None
    call, per_call = one_at_a_time(alone, sample, 64)
    call()
    assert alone.sizes == [64] * 8 and per_call == 8
    spy = Spy(max_call=64)
    call, per_call = gathered(spy, sample, 64, 4)
    call()
    assert spy.sizes == [256, 256] and per_call == 8
    with pytest.raises(ValueError, match="capped at 64"):
        gathered(Spy(), sample, 64, 4)


def test_bench_ov_static_times_and_scores_both_compilations_of_each_int8_model(tuned, trained_run, tmp_path, capsys):  # noqa: F811
    from benchmarks.bench_ov_static import main

    out, m = tuned
    with_int8 = [e["name"] for e in m["models"] if "int8" in entry_files(e)]
    assert with_int8, "int8_bound=100 keeps an int8 file for every model"
    main([str(out), "--run-dir", str(trained_run), "--batch", "8", "--threads", "2", "--rounds", "1",
          "--images", "64", "--out", str(tmp_path / "t.txt")])
    rows = [ln.split("|")[1:-1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "model" not in ln]
    assert [r[0].strip() for r in rows] == with_int8
    for r in rows:
        accs = [float(c) for c in r[4:7]]
        assert all(0 <= v <= 100 for v in accs) and float(r[1]) > 0 and float(r[2]) > 0
    assert (tmp_path / "t.txt").read_text().count("\n| ") == len(with_int8) + 1


def test_routed_deferrals_counts_the_images_each_model_runs_per_batch(tuned, trained_run, capsys):  # noqa: F811
    from benchmarks.routed_deferrals import main, per_batch

    out, _ = tuned
    main([str(out), "--run-dir", str(trained_run), "--batch", "16"])
    rows = [ln.split("|")[1:-1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "model" not in ln]
    b = load_bundle(out)
    assert [r[0].strip() for r in rows] == b.route_names
    first = [int(r[1]) for r in rows]
    assert sum(first) >= 16 and all(0 <= v <= 16 for v in first)  # every image runs at least one model
    x = np.random.default_rng(0).integers(0, 256, (40, *b.manifest["input_size"]), dtype=np.uint8)
    counts = per_batch(b, x, 16)
    assert counts.shape == (2, len(b.route_names))  # whole batches only
    assert counts[0].tolist() == [int(((b.run(x[:16]).models >> k) & 1).sum()) for k in range(len(b.route_names))]
