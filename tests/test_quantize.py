"""`moskd export --quantize int8`: int8 QDQ files, precision and fallback reasons in the manifest, the
bundle runs unchanged (`inference --bundle`), labels close to the fp32 bundle's, bad --calib values.

Speed is never asserted: the fixtures set --int8-min-speedup so that timing cannot decide (0: speed
never vetoes int8; 1e9: it always does, so every model falls back to fp32 with its reason)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from inference.bundle import load_bundle
from inference.export import export_run
from inference.cli import export_main
from inference.cli import main as inference_main
from moskd.data import load_data
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")
CALIB = 64


@pytest.fixture(scope="session")
def int8_bundles(trained_run, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("int8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logs = {}
    try:
        export_run(trained_run, root / "fp32", "onnx", log=lambda *_: None)
        for name, speedup in (("int8", "0"), ("fallback", "1e9")):
            lines: list[str] = []
            code = _main_quiet(["--run-dir", str(trained_run), "--out", str(root / name), "--quantize", "int8",
                                "--calib", str(CALIB), "--int8-bound", "100", "--int8-min-speedup", speedup], lines)
            assert code in (0, None), lines
            logs[name] = lines
    finally:
        torch.set_num_threads(threads)
    return {k: root / k for k in ("fp32", "int8", "fallback")} | {"logs": logs}


def _main_quiet(argv, lines) -> int | None:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = export_main(argv)
        except SystemExit as e:
            code = e.code
    lines.extend(buf.getvalue().splitlines())
    return code


def _entries(m: dict) -> dict:
    return {**({"selector": m["selector"]} if m.get("selector") else {}), **{e["name"]: e for e in m["models"]}}


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_export_writes_qdq_files_and_records_precision_per_model(int8_bundles):
    root = int8_bundles["int8"]
    m = json.loads((root / "manifest.json").read_text())
    fp32 = _entries(json.loads((int8_bundles["fp32"] / "manifest.json").read_text()))
    q = m["quantization"]
    assert q["calib_images"] == CALIB and q["format"] == "QDQ" and q["per_channel"] and q["calib_split"] == "train"
    assert any(f"{CALIB} train images" in line for line in int8_bundles["logs"]["int8"])  # N printed
    for name, e in _entries(m).items():
        assert e["precision"] == "int8", (name, e.get("quantization", {}).get("why"))
        assert e["file"] == f"{name}.int8.onnx" and not (root / f"{name}.onnx").exists()
        assert e["bytes"] == (root / e["file"]).stat().st_size
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(root / e["file"])
        assert "QuantizeLinear" not in _ops(int8_bundles["fp32"] / fp32[name]["file"])
        r = e["quantization"]
        assert r["activation_type"] in ("QUInt8", "QInt8") and r["weight_type"] == "QInt8"
        assert r["calibration"] in ("MinMax", "Entropy", "Percentile")
        assert len(r["candidates"]) in (9, 18) and "why" not in r
        assert {(c["activation_type"], c["reduce_range"]) for c in r["candidates"]} == {
            ("QUInt8", False), ("QUInt8", True), ("QInt8", False)}  # 7-bit weights: for uint8 activations
        assert 0 <= r["select_accuracy_fp32"] <= 1 and 0 <= r["select_accuracy_int8"] <= 1
        assert r["fp32_bytes"] == fp32[name]["bytes"]
    assert set(q["routing_recheck_select"]) >= {"routed_accuracy_fp32", "routed_accuracy_deployed", "route_agreement"}
    assert q["routing_refit_select"] == {**q["routing_refit_select"], "refit": False, "why": "no deferral step"}


def test_a_model_int8_does_not_speed_up_stays_fp32_and_the_manifest_says_why(int8_bundles):
    root = int8_bundles["fallback"]
    m = json.loads((root / "manifest.json").read_text())
    for name, e in _entries(m).items():
        assert e["precision"] == "fp32" and e["file"] == f"{name}.onnx" and (root / e["file"]).is_file()
        assert "faster than 1000000000.0x fp32" in e["quantization"]["why"]
        assert "QuantizeLinear" not in _ops(root / e["file"])
    assert not list(root.glob("*.int8.onnx")) and not list(root.glob(".*"))  # no candidates left behind


def test_int8_bundle_runs_unchanged_and_agrees_with_fp32(int8_bundles, tmp_path, cli):
    images = load_data("digits").splits["test"].images.numpy()
    fp32, int8 = load_bundle(int8_bundles["fp32"]), load_bundle(int8_bundles["int8"])
    a, b = fp32.run(images), int8.run(images)
    assert (a.routes == b.routes).mean() >= 0.8
    assert (a.logits.argmax(1) == b.logits.argmax(1)).mean() >= 0.8
    assert not np.array_equal(a.logits, b.logits)  # it really is another model
    (tmp_path / "in").mkdir()
    for i, x in enumerate(images[:8, 0]):
        Image.fromarray(x, "L").save(tmp_path / "in" / f"{i}.png")
    out = tmp_path / "rows.jsonl"
    code, _, err = cli(inference_main, ["--bundle", str(int8_bundles["int8"]), str(tmp_path / "in"),
                                        "--output", str(out)])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all("class_index" in r for r in rows)


def test_report_compares_the_int8_bundle_with_fp32_on_the_runs_own_splits(trained_run, int8_bundles, tmp_path):  # noqa: F811
    out = tmp_path / "int8-report"
    m = export_run(trained_run, out, "onnx", quantize="int8", calib=CALIB, int8_bound=100, int8_min_speedup=0,
                   report=True, report_rounds=1, report_min_s=0.0, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8-report"]  # the fp32 copy is gone
    rep = json.loads((out / "int8_report.json").read_text())
    md = (out / "int8_report.md").read_text()
    data = load_data("digits").splits
    fp32, int8 = load_bundle(int8_bundles["fp32"]), load_bundle(out)
    for split in ("select", "test"):
        x, y = data[split].images.numpy(), data[split].targets.numpy()
        saved = np.load(out / f"int8_eval_{split}.npz")
        assert np.array_equal(saved["labels"], y)
        for name, e in _entries(m).items():
            assert rep["models"][name]["precision"] == e["precision"] == "int8"
            if name == "selector":
                continue
            got = {"fp32": fp32.programs[fp32.route_names.index(name)](fp32.normalize(x)),
                   "int8": int8.programs[int8.route_names.index(name)](int8.normalize(x))}
            for tag in ("fp32", "int8"):  # each figure is that bundle's own program on the run's split
                assert rep["models"][name][split][tag] == pytest.approx(float((got[tag].argmax(1) == y).mean()))
                assert np.allclose(saved[f"{tag}_logits_{name}"], got[tag], atol=1e-5)
        routed = int8.run(x)
        assert rep["routed"][split]["int8"] == pytest.approx(float((routed.logits.argmax(1) == y).mean()))
        assert np.array_equal(saved["int8_route"], routed.routes)
    for name in [*_entries(m), "routed"]:
        r = rep["routed"] if name == "routed" else rep["models"][name]
        assert r["latency"]["b1"]["speedup"] > 0 and r["latency"]["b64"]["speedup"] > 0
        assert f"| {name} |" in md
    assert {f"{n}:{t}" for n in _entries(m) for t in ("fp32", "int8")} == set(rep["compression"])


def test_the_int8_bundle_refits_the_runs_thresholds_on_its_own_select_outputs(trained_run, tmp_path):  # noqa: F811
    """A cascade whose recorded target (accuracy 0 on select) any threshold reaches: the fewest MACs is
    never deferring, so the refit must move the run's 0.999 to 0; the report compares the two bundles."""
    import shutil

    from inference.router import load_router
    from moskd.atomic import write_json
    from moskd.policy import Policy, Step
    from moskd.run import RunDir

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    base = load_router(run_dir).router.policy
    teacher = len(base.models) - 1
    macs = [*base.macs[:-1], 1e6]  # the selector-only policy does not count the teacher it never reaches
    cascade = Policy("cascade", base.models, macs, {"rule": "fixed", "model": 0},
                     [Step(0, teacher, "max_softmax", 0.999)], "replace", {"target_accuracy": 0.0, "budget_macs": None})
    write_json(RunDir(run_dir).report().policy, cascade.to_dict())
    out = tmp_path / "int8"
    m = export_run(run_dir, out, "onnx", quantize="int8", calib=CALIB, int8_bound=100, int8_min_speedup=0,
                   report=True, report_rounds=1, report_min_s=0.0, log=lambda *_: None)
    rec = m["quantization"]["routing_refit_select"]
    assert rec["refit"] and rec["before"]["thresholds"] == [0.999] and rec["after"]["thresholds"] == [0.0]
    assert rec["select_images"] == len(load_router(run_dir).card["heldout_index"])
    assert m["policy"]["steps"][0]["threshold"] == 0.0 and m["policy"]["entry"] == cascade.entry
    assert rec["after"]["select_macs_per_image"] == pytest.approx(base.macs[0])
    rep = json.loads((out / "int8_report.json").read_text())
    assert "0.999" in rep["policy_fp32"] and "0.999" not in rep["policy_int8"]
    assert rep["routed"]["test"]["macs_per_image_int8"] == pytest.approx(base.macs[0])
    assert rep["routed"]["test"]["macs_per_image"] > base.macs[0]  # the fp32 bundle still defers
    assert load_bundle(out).run(load_data("digits").splits["test"].images.numpy()).routes.max() == 0


def test_report_goes_with_quantize(trained_run, tmp_path, cli):  # noqa: F811
    code, _, err = cli(export_main, ["--run-dir", str(trained_run), "--out", str(tmp_path / "b"), "--report"])
    assert code == 2 and "--report compares the bundle with fp32: it goes with --quantize int8 or --runtime" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("calib", ["0", "-3", "abc", "1.5", "100000"])
def test_bad_calib_is_one_line_and_exit_2(trained_run, tmp_path, cli, calib):  # noqa: F811
    out = tmp_path / "b"
    code, _, err = cli(export_main, ["--run-dir", str(trained_run), "--out", str(out), "--quantize", "int8",
                                     "--calib", calib])
    assert code == 2 and "--calib" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_quantize_flags_that_do_not_go_together(trained_run, tmp_path, cli):  # noqa: F811
    for argv in (["--format", "torch", "--quantize", "int8"], ["--calib", "10"]):
        code, _, err = cli(export_main, ["--run-dir", str(trained_run), "--out", str(tmp_path / "b"), *argv])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


class ConcatBN(nn.Module):
    """DenseNet's pattern: a BatchNorm after a concatenation, which no convolution can absorb."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(y.mean((2, 3)))


def test_an_unfoldable_batchnorm_is_tried_int8_and_fp32(tmp_path):
    from inference.export import _export_onnx
    from inference.quantize import Scorer, _has_batchnorm, quantize_model
    from moskd.fold import FastPath, fast_model

    torch.manual_seed(0)
    model = ConcatBN().eval()
    model.bn.running_var.uniform_(0.5, 2.0)  # scales that differ per channel
    example = torch.randn(2, 1, 8, 8)
    model = fast_model(model, example, FastPath.parse("fold"))
    _export_onnx(model, example, tmp_path / "m.onnx")
    assert _has_batchnorm(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((96, 1, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()
    scorer = Scorer(x, labels, {}, None)  # a classifier: scored by top-1, the policy is not read
    work = tmp_path / "work"
    work.mkdir()
    chosen, rec = quantize_model("m", tmp_path / "m.onnx", work, x[:64], scorer, bound=100, min_speedup=0,
                                 rounds=1, log=lambda *_: None)
    assert sorted({c["batchnorm"] for c in rec["candidates"]}) == ["fp32", "int8"] and len(rec["candidates"]) == 18
    assert chosen is not None and rec["batchnorm"] in ("int8", "fp32")
    for bn in ("int8", "fp32"):
        g = onnx.load(str(work / f"m.QUInt8.MinMax.bn{bn}.onnx")).graph
        node = next(n for n in g.node if n.op_type == "BatchNormalization")
        producers = {o: n.op_type for n in g.node for o in n.output}
        # int8: the BN's scale comes through a DequantizeLinear (per channel); fp32: straight from an initializer
        assert (producers.get(node.input[1]) == "DequantizeLinear") == (bn == "int8")
        if bn == "int8":  # one scale per channel, not one for all eight gammas
            dq = next(n for n in g.node if node.input[1] in n.output)
            scale = next(i for i in g.initializer if i.name == dq.input[1])
            assert list(scale.dims) == [8]
        assert "QuantizeLinear" in {n.op_type for n in g.node}
    # reduce_range: the convolution's int8 weights use 7 bits (|w| <= 64), against the full 8 without it
    from onnx import numpy_helper

    def conv_weight_peak(path: Path) -> int:
        g = onnx.load(str(path)).graph
        return max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in g.initializer
                   if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)

    assert conv_weight_peak(work / "m.QUInt8.MinMax.bnint8.onnx") == 127
    assert conv_weight_peak(work / "m.QUInt8.MinMax.bnint8.rr.onnx") <= 64


def test_choose_takes_the_fastest_graph_then_the_smaller_file_then_the_most_accurate_calibration():
    from inference.quantize import choose

    def c(act, bn, method, speed, size, acc):
        return {"activation_type": act, "batchnorm": bn, "calibration": method, "speedup_b64": speed,
                "bytes": size, "select_accuracy": acc}

    ok = [c("QUInt8", "int8", "MinMax", 1.17, 302, 0.70), c("QUInt8", "fp32", "MinMax", 1.10, 291, 0.69),
          c("QUInt8", "fp32", "Entropy", 1.10, 291, 0.695), c("QInt8", "int8", "MinMax", 0.6, 290, 0.9)]
    assert choose(ok)["batchnorm"] == "fp32" and choose(ok)["calibration"] == "Entropy"  # 1.10 ties 1.17
    ok[1]["speedup_b64"] = ok[2]["speedup_b64"] = 1.0  # clearly slower now: the fastest graph wins
    assert choose(ok)["batchnorm"] == "int8"
