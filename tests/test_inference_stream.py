"""Inference over a folder streams: rows written as predicted, a summary past a screenful, --resume
continues an interrupted output file without predicting its rows again, workers change nothing."""
from __future__ import annotations

import json

import pytest

import inference.files
import inference.predict
from inference.cli import main as inference_main
from inference.files import iter_inputs
from tests.test_inference import digit, save_png
from tests.test_selector import trained_run  # noqa: F401  (session fixture: a tiny trained run)

pytestmark = pytest.mark.usefixtures("one_thread")


def folder(tmp_path, n=50):
    for i in range(n):
        save_png(tmp_path / "in" / f"{i // 20}" / f"{i:03d}.png", digit(i % 10))
    (tmp_path / "in" / "0" / "005.png").write_bytes(b"")  # one bad file: a failed row
    return tmp_path / "in"


class Killed(Exception):
    pass


def test_resume_continues_an_interrupted_output_without_predicting_its_rows_again(trained_run, tmp_path,  # noqa: F811
                                                                                  cli, monkeypatch):
    src = folder(tmp_path)
    flags = ["--run-dir", str(trained_run), str(src), "--device", "cpu", "--batch-size", "8"]
    code, _, err = cli(inference_main, [*flags, "--output", str(tmp_path / "whole.csv")])
    assert code == 2 and "1 of 50 input(s) could not be predicted" in err
    assert "50 input(s): 49 predicted, 1 failed" in err and "000.png" not in err  # a summary, not 50 rows
    predict_chunk, calls = inference.predict.predict_chunk, []

    def dies_after_three_chunks(predictor, chunk):
        calls.append(len(chunk["paths"]))
        if len(calls) > 3:
            raise Killed
        return predict_chunk(predictor, chunk)

    monkeypatch.setattr(inference.predict, "predict_chunk", dies_after_three_chunks)
    cut = tmp_path / "cut.csv"
    with pytest.raises(Killed):
        cli(inference_main, [*flags, "--output", str(cut)])
    assert len(cut.read_text().splitlines()) == 1 + 24  # the header and three chunks' rows, on disk already
    with open(cut, "a") as f:
        f.write(str(src / "1" / "half"))  # a row a kill cut in half: dropped and predicted again
    calls.clear()
    monkeypatch.setattr(inference.predict, "predict_chunk", lambda p, c: calls.append(len(c["paths"])) or
                        predict_chunk(p, c))
    code, _, err = cli(inference_main, [*flags, "--output", str(cut), "--resume", "--workers", "2"])
    assert code == 0 and "after the 24 already there" in err  # the bad file lies in the first part
    assert sum(calls) == 50 - 24  # only the inputs after the rows already written were predicted
    assert cut.read_text() == (tmp_path / "whole.csv").read_text()


def test_resume_refuses_an_output_of_other_inputs(trained_run, tmp_path, cli):  # noqa: F811
    src = folder(tmp_path, n=12)
    out = tmp_path / "p.jsonl"
    out.write_text(json.dumps({"path": "/elsewhere/x.png"}) + "\n")
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(src), "--output", str(out), "--resume",
                                        "--device", "cpu"])
    assert code == 2 and "not input 1 of these inputs" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == json.dumps({"path": "/elsewhere/x.png"}) + "\n"  # nothing already written lost


def test_rows_are_flushed_as_predicted(trained_run, tmp_path, cli, monkeypatch):  # noqa: F811
    src = folder(tmp_path, n=20)
    out = tmp_path / "p.jsonl"
    sizes = []
    write = inference.predict.RowWriter.write

    def watch(self, rows):
        write(self, rows)
        sizes.append(len(out.read_text().splitlines()))  # what a reader sees after each chunk

    monkeypatch.setattr(inference.predict.RowWriter, "write", watch)
    cli(inference_main, ["--run-dir", str(trained_run), str(src), "--output", str(out), "--batch-size", "8",
                         "--device", "cpu"])
    assert sizes == [8, 16, 20]


def test_inputs_are_listed_lazily_in_sorted_order(tmp_path):
    src = folder(tmp_path, n=45)
    listed = iter_inputs([str(src)])
    first = next(listed)
    assert first == (src / "0" / "000.png", None)
    rest = [p.name for p, _ in listed]
    assert rest == [f"{i:03d}.png" for i in range(1, 45)]
    assert list(iter_inputs([str(tmp_path / "empty")]))[0][1] is None  # a missing name is tried as a file
    (tmp_path / "nothing").mkdir()
    assert "no image files found" in list(iter_inputs([str(tmp_path / "nothing")]))[0][1]
    assert inference.files.nth_input([str(src)], 44) == src / "2" / "044.png"


@pytest.mark.parametrize("fast", ["fold+cl", "eager"])
def test_inference_runs_every_model_in_power_of_two_batches_with_the_same_rows(trained_run, tmp_path,  # noqa: F811
                                                                                 cli, monkeypatch, fast):
    """A stream of routed sub-batches of every size would grow memory with the number of files
    (benchmarks/bench_predictor_rss.py): `inference` feeds each model power-of-two chunks only, and
    its rows equal those of one batch per model."""
    src = folder(tmp_path, 40)  # 40 files, one of them bad: a chunk of 15 good images
    sizes: list[int] = []
    load_predictor = inference.predict.load_predictor

    def hooked(*args, **kwargs):
        predictor = load_predictor(*args, **kwargs)
        for m in [predictor.router.selector, *predictor.router.models]:
            m.register_forward_hook(lambda mod, inp, out: sizes.append(len(inp[0])))
        return predictor

    monkeypatch.setattr(inference.predict, "load_predictor", hooked)
    out = tmp_path / "rows.jsonl"
    code, _, err = cli(inference_main, ["--run-dir", str(trained_run), str(src), "--device", "cpu", "--batch-size",
                                        "16", "--output", str(out), "--quiet", "--fast", fast])
    assert code == 2 and "1 of 40 input(s) could not be predicted" in err
    assert sizes and all(n & (n - 1) == 0 for n in sizes), sorted(set(sizes))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    whole = load_predictor(str(trained_run), None, "cpu", fast)  # pow2_batches off: one batch per model
    assert not whole.router.pow2_batches
    files = [p for p, _ in iter_inputs([str(src)])]
    want = inference.predict.predict_files(whole, files, 16, "auto", "cpu")
    assert [(r["path"], r["class_index"], r["student"]) for r in rows] == \
        [(r["path"], r["class_index"], r["student"]) for r in want]
    assert [r["probability"] for r in rows] == pytest.approx([r["probability"] for r in want], abs=1e-6)
