"""Several seeds: the teacher shared by hard links, seeds.json rows equal to each seed's report,
and README/docs results written from the committed seed files."""
from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import pytest

from moskd import pipeline
from moskd.pipeline import run_seeds
from moskd.sections import PipelineConfig
from moskd.results import main as results_main
from moskd.results import outputs
from moskd.seeds import report_rows

ROOT = Path(__file__).resolve().parent.parent


def fake_report(seed: int) -> dict:
    """A report.json with the keys the seed rows read; numbers differ by seed."""
    acc = {"teacher": 0.90, "densenet121": 0.88 + 0.01 * seed, "densenet121-baseline": 0.87,
           "googlenet": 0.86, "googlenet-baseline": 0.86 + 0.02 * seed}
    models = {k: {"role": "teacher" if k == "teacher" else "student", "accuracy": v, "macs": 100} for k, v in acc.items()}
    models["selector"] = {"role": "selector", "accuracy": None, "macs": 1}
    return {"dataset": "digits", "num_images": 10, "input_size": [1, 8, 8], "models": models,
            "routed": {"accuracy": 0.89 + 0.005 * seed, "macs_per_image": 50.0 + seed},
            "oracle": {"accuracy": 0.93}, "gap_closed": 0.1 * seed, "best_single_student": "densenet121",
            "baselines": {"random_same_share": 0.87}, "cascade_same_macs": {"accuracy": 0.885, "macs_per_image": 51.0},
            "iso_accuracy": {"teacher": {"router": None, "cascade": 80.0}},
            "ci95": {"routed_minus_random": [-0.01 + 0.001 * seed, 0.02]}}


def test_seeds_share_the_teacher_and_aggregate_each_report(tmp_path, monkeypatch):
    calls = []

    def fake_run(cfg, config=None, teacher=None):
        run_dir = Path(cfg.run_dir)
        if teacher is not None:  # what run() does first with a shared teacher
            pipeline.share_teacher(teacher, run_dir / "teacher")
        calls.append((cfg.seed, (run_dir / "teacher" / "best.pt").exists()))
        teacher = run_dir / "teacher"
        if not (teacher / "summary.json").exists():  # the first seed trains the teacher (and its cache)
            (teacher / "cache").mkdir(parents=True)
            for name in ("best.pt", "last.pt", "summary.json", "cache/views-k4.pt"):
                (teacher / name).write_text(name)
        (run_dir / "report.json").write_text(json.dumps(fake_report(cfg.seed)))

    monkeypatch.setattr(pipeline, "run", fake_run)
    out = run_seeds(PipelineConfig(run_dir=str(tmp_path), seeds=[0, 1, 2]), command="moskd pipeline --seeds 0 1 2")
    assert calls == [(0, False), (1, True), (2, True)]  # seeds 1 and 2 found the shared teacher
    shared = tmp_path / "seed2" / "teacher"
    assert (shared / "best.pt").stat().st_ino == (tmp_path / "seed0" / "teacher" / "best.pt").stat().st_ino
    assert (shared / "cache" / "views-k4.pt").is_file() and not (shared / "last.pt").exists()
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved == json.loads(json.dumps(out)) and saved["seeds"] == [0, 1, 2] and saved["teacher_shared"] is True
    assert saved["command"] == "moskd pipeline --seeds 0 1 2"
    assert saved["teacher_sha256"] == hashlib.sha256(b"best.pt").hexdigest()  # the teacher file's identity
    rows = saved["rows"]
    for k in range(3):  # every value is the one in that seed's report
        report = json.loads((tmp_path / f"seed{k}" / "report.json").read_text())
        assert rows["routed"]["values"][k] == report["routed"]["accuracy"]
        assert rows["densenet121"]["values"][k] == report["models"]["densenet121"]["accuracy"]
    gains = [0.88 + 0.01 * k - 0.87 for k in range(3)]
    assert rows["kd_gain_densenet121"]["mean"] == pytest.approx(statistics.mean(gains))
    assert rows["kd_gain_densenet121"]["std"] == pytest.approx(statistics.stdev(gains))
    assert rows["kd_gain_googlenet"]["values"] == pytest.approx([0.0, -0.02, -0.04])
    assert rows["cascade_same_macs"]["mean"] == pytest.approx(0.885)
    assert rows["router_macs_at_teacher_accuracy"]["mean"] is None  # never reached: no mean invented
    assert {"oracle", "gap_closed", "random_same_share", "teacher", "googlenet-baseline"} <= set(rows)
    assert "| routed | 89.50 ± 0.50 |" in (tmp_path / "seeds.md").read_text()
    # each seed's CI is its own report's, beside its difference
    assert saved["ci95"] == {"routed_minus_random": [[-0.01 + 0.001 * k, 0.02] for k in range(3)]}
    assert ("| routed_minus_random | +2.00 [-1.00, +2.00] | +2.50 [-0.90, +2.00] | +3.00 [-0.80, +2.00] |"
            in (tmp_path / "seeds.md").read_text())


def test_report_rows_differences():
    rows = report_rows(fake_report(2))
    assert rows["routed_minus_best_student"] == pytest.approx(0.90 - 0.90)
    assert rows["routed_minus_random"] == pytest.approx(0.90 - 0.87)
    assert rows["routed_minus_cascade_same_macs"] == pytest.approx(0.90 - 0.885)


def test_readme_and_results_page_match_the_committed_seed_files(cli):
    for path, text in outputs(ROOT).items():
        assert path.read_text() == text, f"{path} is stale: run `moskd results`"
    code, _, err = cli(results_main, ["--root", str(ROOT), "--check"])
    assert code == 0, err


def test_results_check_fails_on_a_stale_readme(tmp_path, cli):
    (tmp_path / "docs" / "results" / "digits").mkdir(parents=True)
    seeds = {"seeds": [0], "teacher_shared": True, "dataset": "digits", "num_images": 10, "input_size": [1, 8, 8],
             "command": "moskd pipeline --seeds 0", "environment": {"torch": "2", "threads": 2, "cpu_count": 2,
                                                                    "processor": "x86_64", "cuda": None},
             "rows": {"routed": {"values": [0.5], "mean": 0.5, "std": 0.0}}}
    (tmp_path / "docs" / "results" / "digits" / "seeds.json").write_text(json.dumps(seeds))
    (tmp_path / "README.md").write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nrest\n")
    code, _, err = cli(results_main, ["--root", str(tmp_path), "--check"])
    assert code == 2 and "README.md" in err
    code, _, _ = cli(results_main, ["--root", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert code == 0 and text.startswith("intro\n") and text.endswith("rest\n") and "| selector alone (selector + one student) | 50.00 | " in text  # one seed: no spread shown
    assert cli(results_main, ["--root", str(tmp_path), "--check"])[0] == 0


def test_archive_copies_each_seeds_result_files_and_refuses_an_unfinished_run(tmp_path, cli):
    run, root = tmp_path / "run", tmp_path / "repo"
    (root / "docs" / "results").mkdir(parents=True)
    (root / "README.md").write_text("intro\n<!-- results:begin -->\n<!-- results:end -->\n")
    (run / "seeds.json").parent.mkdir(parents=True)
    (run / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "teacher_shared": True, "dataset": "digits",
                                                "num_images": 10, "input_size": [1, 8, 8], "command": "x",
                                                "environment": {"torch": "2", "threads": 2, "cpu_count": 2,
                                                                "processor": "x86_64"}, "rows": {}}))
    (run / "seeds.md").write_text("seeds")
    names = ["report.md", "report.json", "policy.json", "pipeline_timings.json", "eval/meta.json",
             "eval/select.npz", "eval/test.npz", "plots/accuracy_vs_macs.png", "plots/confusion.png",
             "teacher/metrics.jsonl"]
    for k in (0, 1, 2):  # seed 2 unfinished and not in seeds.json: not copied
        for name in (names + (["eval/spare.npz"] if k == 1 else []) if k < 2 else ["report.md"]):
            (run / f"seed{k}" / name).parent.mkdir(parents=True, exist_ok=True)
            (run / f"seed{k}" / name).write_bytes(f"{k}:{name}".encode())
    (run / "seed1" / "policy.json").unlink()
    code, _, err = cli(results_main, ["--root", str(root), "--archive", str(run), "--name", "digits"])
    assert code == 2 and "seed1/policy.json not found" in err and not (root / "docs" / "results" / "digits").exists()
    (run / "seed1" / "policy.json").write_bytes(b"1:policy.json")
    code, out, _ = cli(results_main, ["--root", str(root), "--archive", str(run), "--name", "digits"])
    dest = root / "docs" / "results" / "digits"
    assert code == 0 and "copied 19 files" in out
    assert (dest / "seed1-eval" / "spare.npz").read_bytes() == b"1:eval/spare.npz"  # spare only where the run has it
    assert not (dest / "seed0-eval" / "spare.npz").exists()
    assert (dest / "seed0-eval" / "test.npz").read_bytes() == b"0:eval/test.npz"
    assert (dest / "seed1-policy.json").read_bytes() == b"1:policy.json"
    assert (dest / "seed0-report.json").is_file() and not (dest / "seed1-report.json").exists()
    assert (dest / "teacher-metrics.jsonl").read_bytes() == b"0:teacher/metrics.jsonl"
    assert not list(dest.glob("seed2*"))
    assert "### digits (digits, 2 seeds" in (root / "README.md").read_text()  # and the tables were rewritten


def test_methods_table_compares_complementary_modes_on_the_same_data():
    from moskd.results import methods_table

    def fake(method, routed, teacher="t1"):
        row = lambda v: {"values": [v, v], "mean": v, "std": 0.0}  # noqa: E731
        return {"dataset": "fashion-mnist", "num_images": 100, "input_size": [1, 28, 28], "complementary": method,
                "teacher_sha256": teacher, "rows": {"densenet121": row(0.88), "googlenet": row(0.86), "routed": row(routed),
                         "routed_minus_best_student": row(routed - 0.88), "gap_closed": row(0.1)}}

    table = methods_table({"a": fake("none", 0.885), "b": fake("clusters", 0.8775)})
    assert "| a | none | 88.00 ± 0.00 | 86.00 ± 0.00 | 88.50 ± 0.00 | – | +0.50 ± 0.00 |" in table
    assert "| b | clusters |" in table and "-0.25 ± 0.00" in table
    assert methods_table({"a": fake("none", 0.885), "b": fake("none", 0.88)}) == ""  # one method: nothing to compare
    # another teacher is another experiment: methods are only compared under the same teacher checkpoint
    assert methods_table({"a": fake("none", 0.885), "b": fake("clusters", 0.8775, teacher="t2")}) == ""
    table = methods_table({"a": fake("none", 0.885), "b": fake("clusters", 0.8775),
                           "c": fake("none", 0.89, teacher="t2")})
    assert "| a | none |" in table and "| b | clusters |" in table and "| c |" not in table
    # files that do not name their teacher cannot show they share one
    assert methods_table({"a": fake("none", 0.885, teacher=None), "b": fake("clusters", 0.8775, teacher=None)}) == ""
