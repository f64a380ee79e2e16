"""benchmarks/gpu_check.sh --smoke on the CPU: every step of the one-call GPU check (the CUDA smoke
checks, the whole pipeline of configs/fashion-mnist-gpu.yaml on a few images with the real
architectures, the result file), so the device's minutes go to the run, not to the script's
mistakes. Digits (bundled) stand in for Fashion-MNIST, whose files CI may not have."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOSKD_PYTHON": os.environ.get("MOSKD_PYTHON", sys.executable)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def test_smoke_runs_every_step_and_writes_the_result_file(tmp_path):
    out = tmp_path / "out"
    done = _run("--smoke", "--smoke-dataset", "digits", "--limit", "24", "--device", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["mode"] == "smoke" and result["dataset"] == "digits" and result["config"] == "fashion-mnist-gpu.yaml"
    assert result["device"] == "cpu" and result["torch"] and result["smoke_ok"] is True
    assert result["smoke_checks"] == {"device": True, "precision": True, "compile": True, "ddp": True}
    stages = result["seconds"]["stages"]
    assert list(stages) == ["teacher", "teacher-logit cache", "student densenet121 (distilled)",
                            "student googlenet (distilled)", "selector", "routing policy and evaluation report"]
    assert all(v >= 0 for v in stages.values()) and not any("baseline" in s for s in stages)
    for name in ("teacher", "densenet121", "googlenet", "routed"):
        assert 0.0 <= result["accuracy"][name] <= 1.0, name
    assert result["targets"] == {"teacher": 0.945, "densenet121": 0.945, "googlenet": 0.94, "wall_s": 540}
    assert result["passed"] is None and result["all_passed"] is None  # a smoke checks the steps, not the targets
    # the per-model schedule of the recipe reached the students (the smoke's --epochs 1 wins over it)
    import torch

    card = torch.load(out / "run" / "students" / "googlenet" / "best.pt", weights_only=True)["card"]
    assert card["training"]["epochs"] == 1 and card["training"]["batch_size"] == 512


def test_bad_arguments_are_refused_in_one_line(tmp_path):
    done = _run("--smoke", timeout=120)
    assert done.returncode == 2 and "--out DIR is required" in done.stderr
    done = _run("--smoke", "--out", str(tmp_path), "--frobnicate", timeout=120)
    assert done.returncode == 2 and "unknown argument '--frobnicate'" in done.stderr
    done = _run("--out", str(tmp_path), "--data-dir", str(tmp_path / "none"), timeout=120)
    assert done.returncode == 2 and "no Fashion-MNIST files there" in done.stderr, done.stderr
