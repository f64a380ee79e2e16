"""The shared training engine through teacherTrain: seeds, resume, run-dir guard, config, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

import moskd.engine
from moskd.checkpoint import load_checkpoint
from teacher.train import main as teacher_main

# googlenet: a real registry model with dropout (so the per-epoch RNG handling is exercised), fast at 8x8
FAST = ["--arch", "googlenet", "--limit", "64", "--batch-size", "32", "--eval-batch-size", "64", "--device", "cpu"]


def _weights(path):
    return load_checkpoint(path)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bit_identical_weights(tmp_path):
    for name in ("a", "b"):
        teacher_main(["--run-dir", str(tmp_path / name), "--epochs", "1", *FAST])
    assert _same(_weights(tmp_path / "a/teacher/last.pt"), _weights(tmp_path / "b/teacher/last.pt"))
    teacher_main(["--run-dir", str(tmp_path / "c"), "--epochs", "1", "--seed", "1", *FAST])
    assert not _same(_weights(tmp_path / "a/teacher/last.pt"), _weights(tmp_path / "c/teacher/last.pt"))


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, cli):
    args = ["--epochs", "3", "--ema-decay", "0.9", *FAST]
    teacher_main(["--run-dir", str(tmp_path / "whole"), *args])

    real_save, saves = moskd.engine.save_checkpoint, []

    def save_then_die(obj, path):  # the process dies right after epoch 2's last.pt is on disk
        real_save(obj, path)
        if Path(path).name == "last.pt":
            saves.append(obj["epoch"])
            if obj["epoch"] == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(moskd.engine, "save_checkpoint", save_then_die)
    code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "cut"), *args])
    assert code == 130 and "--resume" in err and saves == [0, 1]
    monkeypatch.setattr(moskd.engine, "save_checkpoint", real_save)
    teacher_main(["--run-dir", str(tmp_path / "cut"), *args, "--resume"])

    whole, cut = (load_checkpoint(tmp_path / d / "teacher/last.pt") for d in ("whole", "cut"))
    assert cut["epoch"] == 2
    assert _same(whole["model"], cut["model"]) and _same(whole["ema"], cut["ema"])
    lines = (tmp_path / "cut/teacher/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_existing_run_is_not_overwritten_without_resume_or_force(tmp_path, cli):
    run = str(tmp_path / "run")
    teacher_main(["--run-dir", run, "--epochs", "1", *FAST])
    before = (tmp_path / "run/teacher/last.pt").read_bytes()
    code, _, err = cli(teacher_main, ["--run-dir", run, "--epochs", "1", *FAST])
    assert code == 2 and "--resume" in err and "--force" in err
    assert (tmp_path / "run/teacher/last.pt").read_bytes() == before
    code, _, _ = cli(teacher_main, ["--run-dir", run, "--epochs", "1", "--seed", "5", "--force", *FAST])
    assert code == 0 and (tmp_path / "run/teacher/last.pt").read_bytes() != before


def test_stage_folder_contents_and_resolved_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 5\nteacher:\n  lr: 0.01\n  label_smoothing: 0.1\nstudents:\n  epochs: 9\n")
    teacher_main(["--run-dir", str(tmp_path / "run"), "--config", str(cfg), "--epochs", "1", *FAST])
    out = tmp_path / "run/teacher"
    assert {"best.pt", "last.pt", "metrics.jsonl", "config.yaml", "summary.json"} <= {p.name for p in out.iterdir()}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["epochs"] == 1 and resolved["lr"] == 0.01 and resolved["label_smoothing"] == 0.1
    ckpt = load_checkpoint(out / "best.pt", role="teacher", arch="googlenet")
    assert {"epoch", "config", "card"} <= ckpt.keys() and not {"optimizer", "scheduler"} & ckpt.keys()  # slim
    assert {"optimizer", "scheduler"} <= load_checkpoint(out / "last.pt").keys()
    assert ckpt["card"]["input_size"] == [1, 8, 8] and len(ckpt["card"]["mean"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0


def test_bad_config_values_are_one_line(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    for text, match in (("epochs: many\n", "'epochs' must be int"), ("teacher:\n  epoch: 3\n", "unknown setting 'epoch'"),
                        ("[1, 2\n", "not valid YAML")):
        cfg.write_text(text)
        code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "r"), "--config", str(cfg)])
        assert code == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_teacher_on_digits_far_beats_chance(tmp_path):
    teacher_main(["--run-dir", str(tmp_path / "run"), "--limit", "400", "--epochs", "3", "--batch-size", "16",
                  "--device", "cpu"])
    summary = json.loads((tmp_path / "run/teacher/summary.json").read_text())
    assert summary["test_acc"] > 0.5  # chance is 0.1


def test_torchrun_two_processes_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "teacher.train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run/teacher/metrics.jsonl").read_text().splitlines()[0])
    assert record["world_size"] == 2
    assert load_checkpoint(tmp_path / "run/teacher/best.pt")["card"]["role"] == "teacher"
