"""Inference stage: cost counting, the evaluation report, routed predictions for files and folders,
bad files, and image modes."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from inference.cli import main as inference_main
from inference.predict import predict_files, preprocess
from inference.router import load_router
from moskd.data import load_data
from moskd.views import normalize
from moskd.profile import count_macs, count_params
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- MACs and parameters


@pytest.mark.parametrize("name, kwargs, params, macs", [
    ("resnet50", {}, 25_557_032, 4.09e9),
    ("densenet121", {}, 7_978_856, 2.83e9),
    ("googlenet", {"aux_logits": False, "init_weights": False}, 6_624_904, 1.50e9),
])
def test_costs_match_torchvision_figures(name, kwargs, params, macs):
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    assert count_params(model) == params
    assert count_macs(model, [3, 224, 224]) == pytest.approx(macs, rel=0.01)


# ---------------------------------------------------------------- report


DESIGN_KEYS = {"dataset", "split", "num_images", "input_size", "models", "routed", "oracle", "baselines",
               "gap_closed", "compression"}


def check_schema(r: dict) -> None:
    """Every key DESIGN.md fixes for report.json, with its type."""
    assert DESIGN_KEYS <= set(r)
    assert isinstance(r["dataset"], str) and r["split"] == "test"
    assert isinstance(r["num_images"], int) and r["num_images"] > 0
    assert isinstance(r["input_size"], list) and len(r["input_size"]) == 3
    assert all(isinstance(v, int) for v in r["input_size"])
    assert {m["role"] for m in r["models"].values()} == {"teacher", "student", "selector"}
    for name, m in r["models"].items():
        assert m["role"] in ("teacher", "student", "selector") and isinstance(m["arch"], str), name
        assert all(isinstance(m[k], int) and m[k] > 0 for k in ("params", "bytes", "macs")), name
        assert m["accuracy"] is None or (isinstance(m["accuracy"], float) and 0 <= m["accuracy"] <= 1), name
    ro = r["routed"]
    assert isinstance(ro["accuracy"], float) and 0 <= ro["accuracy"] <= 1
    assert isinstance(ro["macs_per_image"], float)
    assert isinstance(ro["route_share"], dict) and all(isinstance(v, float) for v in ro["route_share"].values())
    assert sum(ro["route_share"].values()) == pytest.approx(1.0)
    assert ro["escalate_threshold"] is None or isinstance(ro["escalate_threshold"], float)
    assert isinstance(r["oracle"]["accuracy"], float)
    students = [k for k in ro["route_share"] if k != "teacher"]
    want = {f"always_{k}" for k in students} | {"random_same_share", "most_confident"}
    assert want <= set(r["baselines"]) and all(isinstance(r["baselines"][k], float) for k in want)
    assert r["gap_closed"] is None or isinstance(r["gap_closed"], float)
    pol = r["policy"]  # DESIGN.md, "Routing policy"
    assert isinstance(pol["family"], str) and 0 <= pol["accuracy"] <= 1 and pol["macs_per_image"] > 0
    assert sum(pol["route_share"].values()) == pytest.approx(1.0)
    assert {"policy_minus_teacher", "policy_minus_best_student", "policy_minus_cascade_same_macs"} <= set(r["ci95"])
    assert r["curves"]["families"] and all(p["accuracy"] is not None and "params" in p
                                           for c in r["curves"]["families"].values() for p in c)
    for name in r["models"]:
        c = r["compression"][name]
        assert all(isinstance(c[k], float) for k in ("params_reduction", "bytes_reduction", "macs_reduction"))


@pytest.fixture(scope="module")
def evaluated_run(trained_run, tmp_path_factory):  # noqa: F811
    """A copy of the tiny run to evaluate: the evaluation writes RUN/policy.json, which every later
    load of the shared run would otherwise route by."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained_run, run)
    return run


@pytest.fixture(scope="module")
def report(evaluated_run, cli_module):
    code, out, err = cli_module(inference_main, ["--run-dir", str(evaluated_run), "--split", "test", "--device", "cpu"])
    assert code == 0, err
    return json.loads((evaluated_run / "report.json").read_text()), out


@pytest.fixture(scope="module")
def cli_module():
    """Like conftest's `cli`, for module-scoped fixtures (captures with redirect, not capsys)."""
    import contextlib
    import io

    def run(main, argv):
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    return run


def test_report_json_has_every_design_key_with_types(report, evaluated_run):
    r, _ = report
    check_schema(r)
    assert (evaluated_run / "report.md").is_file() and (evaluated_run / "plots" / "accuracy_vs_macs.png").is_file()
    assert r["num_images"] == len(load_data("digits").splits["test"].targets)  # the whole test split


def test_report_numbers_hang_together(report):
    r, stdout = report
    names = r["routed"]["students"]
    assert names == ["b_cheap", "a_dear"]
    assert "b_cheap-baseline" in r["models"] and r["models"]["b_cheap-baseline"]["routed"] is False
    # the policy's real sub-batch dispatch answers as its replay on the saved arrays, image for image
    assert r["policy"]["dispatch_matches_replay"] == {"labels": 1.0, "routes": 1.0, "models": 1.0}
    accs = [r["models"][k]["accuracy"] for k in names]
    assert r["oracle"]["accuracy"] >= max(accs)
    assert [r["baselines"][f"always_{k}"] for k in names] == accs
    assert r["compression"]["teacher"] == {"params_reduction": 0.0, "bytes_reduction": 0.0, "macs_reduction": 0.0}
    sel = r["models"]["selector"]["macs"]
    share = r["routed"]["route_share"]
    expect = sel + sum(share[k] * r["models"][k]["macs"] for k in names)
    assert r["routed"]["macs_per_image"] == pytest.approx(expect)
    assert r["systems"]["bundle"]["bytes"] == sum(r["models"][k]["bytes"] for k in ["teacher", *names, "selector"])
    assert "## Compression" in stdout and "gap closed" in stdout


def test_moskd_report_dispatches_to_the_same_evaluation(evaluated_run, report, cli):
    from moskd.cli import main as moskd_main

    full = (evaluated_run / "report.json").read_bytes()
    code, out, err = cli(moskd_main, ["report", "--run-dir", str(evaluated_run), "--device", "cpu", "--limit", "40"])
    assert code == 0, err
    r = json.loads((evaluated_run / "report-limit40" / "report.json").read_text())
    check_schema(r)
    assert r["num_images"] == 40
    assert (evaluated_run / "report.json").read_bytes() == full  # the full report is untouched
    assert (evaluated_run / "report-limit40" / "report.md").is_file()
    assert (evaluated_run / "report-limit40" / "eval" / "test.npz").is_file()


def test_evaluation_refuses_another_dataset(trained_run, cli):  # noqa: F811
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), "--dataset", "cifar10", "--device", "cpu"])
    assert code == 2 and "--dataset digits" in err and len(err.strip().splitlines()) == 1


def test_missing_stage_names_the_first_missing_one_and_its_command(trained_run, tmp_path, cli):  # noqa: F811
    code, _, err = cli(inference_main, ["--run-dir", str(tmp_path), str(tmp_path), "--device", "cpu"])
    assert code == 2 and f"teacherTrain --run-dir {tmp_path}" in err and len(err.strip().splitlines()) == 1
    no_selector = tmp_path / "no-selector"
    shutil.copytree(trained_run / "students", no_selector / "students")
    code, _, err = cli(inference_main, ["--run-dir", str(no_selector), str(tmp_path), "--device", "cpu"])
    assert code == 2 and f"trainSelector --run-dir {no_selector}" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- files and folders


def digit(i: int = 0) -> np.ndarray:
    """An 8x8 uint8 digits test image (bright ink on dark), as the models were trained on."""
    return load_data("digits").splits["test"].images[i, 0].numpy()


def save_png(path: Path, a: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode).save(path)
    return path


def test_every_bad_file_gets_one_stderr_line_and_the_rest_are_written(trained_run, tmp_path, cli):  # noqa: F811
    good = [save_png(tmp_path / "in" / "good.png", digit(0)), save_png(tmp_path / "in" / "sub" / "good2.png", digit(1))]
    data = (tmp_path / "in" / "good.png").read_bytes()
    bad = {
        "truncated.png": data[: len(data) // 2],
        "notes.png": b"this is a text file, not an image\n",
        "empty.png": b"",
    }
    for name, content in bad.items():
        (tmp_path / "in" / name).write_bytes(content)
    os.symlink(tmp_path / "gone.png", tmp_path / "in" / "sub" / "dangling.png")  # unreadable directory entry
    (tmp_path / "in" / "readme.txt").write_text("not an image extension: skipped inside folders")
    missing = tmp_path / "nowhere.png"  # named explicitly
    out = tmp_path / "preds.jsonl"
    code, stdout, err = cli(inference_main, ["--run-dir", str(trained_run), str(tmp_path / "in"), str(missing),
                                             "--output", str(out), "--device", "cpu"])
    assert code == 2 and stdout == ""  # bad inputs: exit 2; the table is on stderr
    lines = err.strip().splitlines()
    bad_inputs = [("empty.png", "empty"), ("notes.png", "not an image"), ("truncated.png", "truncated"),
                  ("dangling.png", "no such file"), ("nowhere.png", "no such file")]
    for name, why in bad_inputs:
        hits = [ln for ln in lines if name in ln]
        assert len(hits) == 1 and why in hits[0], (name, lines)  # its row of the table, with the error
    assert "readme.txt" not in err and "5 of 7 input(s) could not be predicted" in lines[-1]
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    # a row for every input, in input order: the folder sorted (files before sub-folders), then the missing file
    order = ["empty.png", "good.png", "notes.png", "truncated.png", "dangling.png", "good2.png", "nowhere.png"]
    assert [Path(r["path"]).name for r in rows] == order
    assert [r["path"] for r in rows if r["error"] is None] == [str(p) for p in good]
    for name, why in bad_inputs:
        (row,) = [r for r in rows if Path(r["path"]).name == name]
        assert why in row["error"] and row["class_index"] is None and row["p_right"] is None
    assert set(rows[0]) == {"path", "class_index", "class_name", "probability", "student", "p_right", "error"}
    assert any("good2.png" in ln for ln in lines)


def test_permission_errors_as_root_too(trained_run, tmp_path, cli, monkeypatch):  # noqa: F811
    """Unreadable file and folder, simulated: chmod cannot lock out root, who runs CI."""
    import inference.predict as predict

    save_png(tmp_path / "in" / "ok.png", digit(0))
    locked = save_png(tmp_path / "in" / "locked.png", digit(1))
    closed = tmp_path / "in" / "closed"
    save_png(closed / "inner.png", digit(2))
    real_open, real_scandir = predict.Image.open, os.scandir

    def fake_open(fp, *a, **kw):
        if Path(fp) == locked:
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **kw)

    def fake_scandir(path="."):
        if Path(path) == closed:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(predict.Image, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    out = tmp_path / "p.jsonl"
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(tmp_path / "in"), "--output", str(out),
                                        "--device", "cpu", "--quiet"])
    lines = err.strip().splitlines()
    assert code == 2
    # --quiet: no table, so each failed input gets its own line
    assert [ln for ln in lines if "locked.png" in ln] == [f"inference: {locked}: permission denied"]
    assert len([ln for ln in lines if str(closed) in ln and "cannot list folder" in ln]) == 1
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["path"] for r in rows if r["error"] is None] == [str(tmp_path / "in" / "ok.png")]
    assert {Path(r["path"]).name: r["error"] for r in rows if r["error"]} == {
        "locked.png": "permission denied", "closed": next(r["error"] for r in rows if r["path"] == str(closed))}


def test_csv_output_and_bad_suffix(trained_run, tmp_path, cli):  # noqa: F811
    img = save_png(tmp_path / "d.png", digit(3))
    out = tmp_path / "p.csv"
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(img), "--output", str(out),
                                        "--device", "cpu"])
    assert code == 0, err
    head, row = out.read_text().splitlines()
    assert head == "path,class_index,class_name,probability,student,p_right_b_cheap,p_right_a_dear,error"
    assert row.startswith(str(img) + ",")
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(img), "--output", str(tmp_path / "p.txt")])
    assert code == 2 and ".jsonl or .csv" in err


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_output_to_stdout_has_a_row_per_input_in_order_and_quiet_drops_the_table(trained_run, tmp_path, cli, fmt):  # noqa: F811
    a = save_png(tmp_path / "a.png", digit(3))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    b = save_png(tmp_path / "b.png", digit(4))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    inputs = [b, bad, empty, a]  # input order, not sorted
    code, out, err = cli(inference_main, ["--run-dir", str(trained_run), *map(str, inputs), "--output", "-",
                                          "--quiet", "--device", "cpu", *(["--output-format", "jsonl"] * (fmt == "jsonl"))])
    assert code == 2
    if fmt == "csv":
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(out)))
        assert list(rows[0]) == ["path", "class_index", "class_name", "probability", "student",
                                 "p_right_b_cheap", "p_right_a_dear", "error"]
        errors = [r["error"] or None for r in rows]
    else:
        rows = [json.loads(ln) for ln in out.splitlines()]
        errors = [r["error"] for r in rows]
        assert set(rows[0]["p_right"]) == {"b_cheap", "a_dear"} and rows[1]["p_right"] is None
    assert [r["path"] for r in rows] == list(map(str, inputs))
    assert errors[0] is None and errors[3] is None
    assert "not an image" in errors[1] and "no image files found" in errors[2]
    # --quiet: no table on stderr, one line per failed input and the summary
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("inference: 2 of 4 input(s) could not be predicted"), err
    code, out, err = cli(inference_main, ["--run-dir", str(trained_run), str(a), "--device", "cpu"])
    assert code == 0 and out == "" and "p_right:b_cheap" in err and str(a) in err  # the table, on stderr


def test_output_format_and_suffix_must_agree_with_an_output(trained_run, tmp_path, cli):  # noqa: F811
    img = save_png(tmp_path / "d.png", digit(3))
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(img), "--output-format", "csv"])
    assert code == 2 and "--output-format needs --output" in err
    out = tmp_path / "preds.txt"
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(img), "--output", str(out),
                                        "--output-format", "jsonl", "--device", "cpu"])
    assert code == 0 and json.loads(out.read_text())["path"] == str(img)


def test_file_prediction_equals_the_router_on_the_dataset_image(trained_run, tmp_path):  # noqa: F811
    run = load_router(trained_run, device="cpu")
    data = load_data("digits")
    files = [save_png(tmp_path / f"{i}.png", digit(i)) for i in range(6)]
    rows = predict_files(run, files, batch_size=4, invert="auto", device="cpu", on_fail=pytest.fail)
    x = normalize(data.splits["test"].images[:6], torch.tensor(run.card["mean"]), torch.tensor(run.card["std"]))
    expect = run.router(x)
    assert [r["class_index"] for r in rows] == expect.logits.argmax(1).tolist()
    assert [r["student"] for r in rows] == [run.router.route_names[i] for i in expect.routes]
    probs = expect.logits.softmax(1).max(1).values
    assert [r["probability"] for r in rows] == pytest.approx(probs.tolist(), abs=1e-5)


DIGITS_CARD = {"input_size": [1, 8, 8], "dataset": "digits"}


def _variants(a: np.ndarray) -> dict[str, Image.Image]:
    rgb = np.stack([a] * 3, -1)
    palette = Image.new("P", (8, 8))
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.putdata(a.ravel().tolist())
    transparent = np.zeros((8, 8, 4), np.uint8)
    transparent[..., 3] = a  # black ink whose opacity draws the digit, on a transparent background
    return {
        "grayscale": Image.fromarray(a, "L"),
        "rgb": Image.fromarray(rgb, "RGB"),
        "rgba_opaque": Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)]), "RGBA"),
        "palette": palette,
        "gray16": Image.frombytes("I;16", (8, 8), (a.astype("<u2") * 257).tobytes()),
        "large": Image.fromarray(np.kron(a, np.ones((4, 4), np.uint8)), "L"),  # 32x32, shrunk by area
        "paper": Image.fromarray(255 - a, "L"),  # dark ink on white: inverted for digits
        "rgba_transparent": Image.fromarray(transparent, "RGBA"),
    }


@pytest.mark.parametrize("kind", list(_variants(np.zeros((8, 8), np.uint8))))
def test_image_modes_become_the_training_tensor(kind, tmp_path):
    a = digit(5)
    im = _variants(a)[kind]
    path = tmp_path / f"{kind}.png"
    im.save(path)  # through a real file: the mode must survive PNG
    with Image.open(path) as loaded:
        loaded.load()
        x = preprocess(loaded, DIGITS_CARD)
    assert x.dtype == torch.uint8 and x.shape == (1, 8, 8)
    assert (x.int() - torch.from_numpy(a)[None].int()).abs().max() <= 1, kind


def test_rgb_models_get_three_channels_and_no_inversion():
    a = digit(2)
    card = {"input_size": [3, 16, 16], "dataset": "cifar10"}
    x = preprocess(Image.fromarray(255 - a, "L"), card)
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1])
    assert x.float().mean() > 127  # a light image stays light: only digits cards invert
    palette = _variants(a)["palette"]
    assert preprocess(palette, card).shape == (3, 16, 16)
    assert preprocess(Image.fromarray(255 - a, "L"), DIGITS_CARD, invert="no").float().mean() > 127
