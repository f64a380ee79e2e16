"""The inference command on a run whose selector splits images across both students and the
teacher (conftest's `split_run`): routed predictions for files with and without --escalate, the
report's contract numbers against a plain reference, and the router's refusals of a student
changed since the selector was trained and of students disagreeing on the class count.

Every expected value comes from the fixture's reference rule (numpy) and the models' known answers,
never from the code under test.
"""
from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from inference.cli import main as inference_main
from moskd.data import load_data
from tests.conftest import AnswerNet, save_answer_model

pytestmark = pytest.mark.usefixtures("one_thread")
LIMIT = 60


@pytest.fixture(scope="module")
def digits_test():
    return load_data("digits", limit=LIMIT).splits["test"]


def _pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images.numpy()):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(a[0], "L").save(paths[-1])
    return paths


def _probability(scale: float) -> float:
    """Softmax top probability of a one-hot logit margin `scale` over 10 classes."""
    return math.exp(scale) / (math.exp(scale) + 9)


@pytest.mark.parametrize("escalate", [False, True], ids=["routed", "escalate"])
def test_inference_rows_name_the_model_that_answered(split_run, digits_test, tmp_path, cli, escalate):
    images = digits_test.images[:24]
    paths = _pngs(tmp_path / "in", images)
    out = tmp_path / "rows.jsonl"
    flags = ["--escalate", str(split_run.TAU)] if escalate else []
    code, _, err = cli(inference_main, ["--run-dir", str(split_run.path), str(tmp_path / "in"), "--output", str(out),
                                        "--device", "cpu", "--batch-size", "10", *flags])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = split_run.routes(images.numpy(), split_run.TAU if escalate else None)
    route_names = [*split_run.names, "teacher"]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert [r["student"] for r in rows] == [route_names[k] for k in want]
    assert ("teacher" in {r["student"] for r in rows}) == escalate and len({r["student"] for r in rows}) >= 2
    assert [r["class_index"] for r in rows] == [split_run.answers[k] for k in want]
    assert [r["class_name"] for r in rows] == [str(split_run.answers[k]) for k in want]
    assert [r["probability"] for r in rows] == pytest.approx([_probability(split_run.scales[k]) for k in want],
                                                             abs=1e-5)
    scores = split_run.scores(images.numpy())
    for r, s in zip(rows, scores):
        assert r["p_right"] == pytest.approx(dict(zip(split_run.names, s)), abs=1e-5) and r["error"] is None


def _report(split_run, cli, *flags):
    code, out, err = cli(inference_main, ["--run-dir", str(split_run.path), "--split", "test", "--limit", str(LIMIT),
                                          "--device", "cpu", *flags])
    assert code == 0, err
    # the fixture run was not made with --limit, so this cut of it goes beside the full report
    return json.loads((split_run.path / f"report-limit{LIMIT}" / "report.json").read_text())


def _bytes(i: int, sr) -> int:
    buf = io.BytesIO()
    torch.save(AnswerNet(10, 1, sr.answers[i], sr.scales[i], sr.widths[i]).state_dict(), buf)
    return buf.getbuffer().nbytes


@pytest.mark.parametrize("escalate", [False, True], ids=["routed", "escalate"])
def test_report_contract_numbers_match_a_plain_reference(split_run, digits_test, cli, escalate):
    tau = split_run.TAU if escalate else None
    r = _report(split_run, cli, *(["--escalate", str(tau)] if escalate else []))
    y = digits_test.targets.numpy()
    route = split_run.routes(digits_test.images.numpy(), tau)
    names = [*split_run.names, "teacher"]
    acc = {k: float(np.mean(y == split_run.answers[i])) for i, k in enumerate(names)}
    share = {k: float(np.mean(route == i)) for i, k in enumerate(names)}
    macs = {k: split_run.macs(i) for i, k in enumerate(names)}
    assert r["num_images"] == LIMIT and r["split"] == "test" and r["dataset"] == "digits"

    for i, k in enumerate(names):
        m = r["models"][k]
        assert (m["role"], m["arch"]) == ("teacher" if k == "teacher" else "student", "test_answer")
        assert (m["params"], m["macs"], m["bytes"]) == (10 * split_run.widths[i], macs[k], _bytes(i, split_run))
        assert m["accuracy"] == pytest.approx(acc[k])
    w = split_run.selector_width  # 3 convs, 3 batch norms (weight and bias), the head with its bias
    sel_params = 9 * w + 9 * w * 2 * w + 9 * 2 * w * 4 * w + 2 * (w + 2 * w + 4 * w) + 4 * w * 2 + 2
    assert (r["models"]["selector"]["params"], r["models"]["selector"]["macs"]) == (sel_params,
                                                                                   split_run.selector_macs)

    ro = r["routed"]
    expected_share = {k: v for k, v in share.items() if k != "teacher" or escalate}
    assert ro["route_share"] == pytest.approx(expected_share)
    assert min(expected_share.values()) >= 0.2  # the fixture really splits the split
    routed_acc = float(np.mean(y == np.array(split_run.answers)[route]))
    assert ro["accuracy"] == pytest.approx(routed_acc)
    assert ro["macs_per_image"] == pytest.approx(split_run.selector_macs + sum(share[k] * macs[k] for k in names))
    assert ro["escalate_threshold"] == (pytest.approx(tau) if escalate else None)

    oracle = float(np.mean(np.isin(y, split_run.answers[:2])))
    assert r["oracle"]["accuracy"] == pytest.approx(oracle)
    b = r["baselines"]
    assert b["always_zero"] == pytest.approx(acc["zero"]) and b["always_one"] == pytest.approx(acc["one"])
    assert b["random_same_share"] == pytest.approx(sum(share[k] * acc[k] for k in names))  # its expectation
    assert b["most_confident"] == pytest.approx(acc["zero"])  # zero's margin 6 beats one's 3 on every image
    best = max(acc["zero"], acc["one"])
    assert r["gap_closed"] == pytest.approx((routed_acc - best) / (oracle - best))

    t_bytes = _bytes(2, split_run)
    for i, k in enumerate(names[:2]):
        c = r["compression"][k]
        assert c["params_reduction"] == pytest.approx(1 - split_run.widths[i] / split_run.widths[2])
        assert c["macs_reduction"] == pytest.approx(1 - macs[k] / macs["teacher"])
        assert c["bytes_reduction"] == pytest.approx(1 - _bytes(i, split_run) / t_bytes)


def _copy(split_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(split_run.path, run)
    return run


def _png(tmp_path, image):
    path = tmp_path / "one.png"
    Image.fromarray(image.numpy()[0], "L").save(path)
    return path


def test_router_refuses_a_student_changed_after_the_selector_was_trained(split_run, digits_test, tmp_path, cli):
    run = _copy(split_run, tmp_path)
    card = load_data("digits").card()
    # same folder, same card, another width: the selector's labels describe a model no longer there
    save_answer_model(run / "students" / "one" / "best.pt", "student", card, 1, 3.0, 20,
                      distillation={"kd_loss": "kl"})
    code, out, err = cli(inference_main, ["--run-dir", str(run), str(_png(tmp_path, digits_test.images[0])),
                                          "--device", "cpu"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and out == ""
    assert str(run / "students" / "one" / "best.pt") in err and "changed since the selector was trained" in err
    assert f"{9 * 64 * 20:,} MACs" in err and f"{split_run.macs(1):,}" in err and "trainSelector" in err


def test_router_refuses_students_with_different_class_counts(split_run, digits_test, tmp_path, cli):
    run = _copy(split_run, tmp_path)
    card = load_data("digits").card()
    five = {**card, "num_classes": 5, "class_names": card["class_names"][:5]}
    save_answer_model(run / "students" / "one" / "best.pt", "student", five, 1, 3.0, split_run.widths[1],
                      distillation={"kd_loss": "kl"})
    code, out, err = cli(inference_main, ["--run-dir", str(run), str(_png(tmp_path, digits_test.images[0])),
                                          "--device", "cpu"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and out == ""
    assert "5 classes" in err and "has 10" in err and str(run / "students" / "one" / "best.pt") in err
