"""The exit-code contract, end to end: every console script (as its installed shim calls it) and
every documented `python -m` entry runs as a subprocess on a tiny digits run and exits 0, having
written what it says; bad input exits 2 with one line, an interrupt exits 130. (Tiny CNNs stand in
for the seed architectures, bound to their names by a sitecustomize: the commands' plumbing is
under test, not the networks.)"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--limit", "48", "--epochs", "1", "--device", "cpu"]
SITE = textwrap.dedent("""
    import torch
    from torch import nn
    import moskd.models

    torch.set_num_threads(1)

    class Tiny(nn.Module):
        def __init__(self, num_classes, in_chans, width):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
                                          nn.BatchNorm2d(width), nn.ReLU(),
                                          nn.Conv2d(width, width, 3, padding=1, bias=False),
                                          nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(self.features(x))

    for name, width in (("resnet50", 32), ("densenet121", 24), ("googlenet", 16)):
        moskd.models.REGISTRY[name] = lambda num_classes, in_chans=3, w=width, **_: Tiny(num_classes, in_chans, w)
""")


def scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: console script -> "module:function"."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^(\w+) = "([\w.:]+)"$', block, flags=re.M))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITE)
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}


def run(env, argv: list[str], script: str | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    """A console script exactly as its shim runs it (sys.exit(main())), or a plain command line."""
    if script is not None:
        module, func = scripts()[script].split(":")
        argv = [sys.executable, "-c", f"import sys; from {module} import {func}; sys.argv[0] = {script!r}; "
                                      f"sys.exit({func}())", *argv]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, (argv, done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    if expect == 0:  # stderr: progress, warnings and the closing summary only
        assert not [ln for ln in done.stderr.splitlines() if ": error:" in ln], done.stderr
    return done


def test_every_console_script_and_python_m_entry_exits_as_the_contract_says(tmp_path, env):
    assert set(scripts()) == {"teacherTrain", "StudentTrain", "trainSelector", "inference", "moskd"}
    r = tmp_path / "run"
    run(env, ["--run-dir", str(r), *TINY], "teacherTrain")
    assert all((r / "teacher" / f).is_file() for f in ("best.pt", "last.pt", "summary.json", "curves.png"))
    for model, arch in (("1", "densenet121"), ("2", "googlenet")):
        run(env, ["--run-dir", str(r), *TINY, "--model", model], "StudentTrain")
        assert (r / "students" / arch / "summary.json").is_file()
    run(env, ["--run-dir", str(r), *TINY, "--width", "2"], "trainSelector")
    assert (r / "selector" / "summary.json").is_file() and (r / "selector" / "curves.png").is_file()

    done = run(env, ["--run-dir", str(r), "--split", "test", "--limit", "48", "--device", "cpu"], "inference")
    assert json.loads((r / "report.json").read_text())["num_images"] == 48
    (r / "policy.json").unlink()  # fitted by the evaluation above; `moskd policy` writes it again
    done = run(env, ["policy", "--run-dir", str(r), "--from-eval", "--target", "best-student"], "moskd")
    assert json.loads((r / "policy.json").read_text())["target"]["target"] == "best-student"
    assert "policy: " in done.stdout
    image = tmp_path / "one.png"
    from PIL import Image
    Image.new("L", (8, 8), 200).save(image)
    rows = tmp_path / "rows.csv"
    run(env, ["--run-dir", str(r), str(image), "--output", str(rows), "--device", "cpu"], "inference")
    assert rows.read_text().count("\n") == 2
    run(env, ["report", "--run-dir", str(r), "--from-eval"], "moskd")
    bundle = tmp_path / "bundle"
    run(env, ["export", "--run-dir", str(r), "--out", str(bundle)], "moskd")
    assert json.loads((bundle / "manifest.json").read_text())["format_version"] == 2
    run(env, ["--bundle", str(bundle), str(image), "--output", str(tmp_path / "b.csv")], "inference")
    assert (tmp_path / "b.csv").read_text().splitlines()[1:] == rows.read_text().splitlines()[1:]
    done = run(env, ["clean", "--run-dir", str(r)], "moskd")
    assert not list(r.rglob("last.pt")) and "freed" in done.stdout

    # bad input: one line on stderr, exit 2; the run is untouched
    done = run(env, ["--run-dir", str(r), *TINY], "teacherTrain", expect=2)
    assert done.stderr.count("\n") == 1 and "already holds a run" in done.stderr
    done = run(env, [str(tmp_path / "missing.png"), "--run-dir", str(r), "--device", "cpu", "--quiet"],
               "inference", expect=2)
    assert done.stderr.count("\n") == 1 or "could not be predicted" in done.stderr

    # the documented `python -m` entries: the umbrella, and the teacher's (what torchrun runs)
    run(env, [sys.executable, "-m", "moskd.cli", "pipeline", "--run-dir", str(tmp_path / "p"), *TINY,
              "--no-baselines", "--config", str(_small_selector(tmp_path))])
    assert (tmp_path / "p" / "report.json").is_file() and not list((tmp_path / "p").rglob("last.pt"))
    run(env, [sys.executable, "-m", "teacher.cli", "--run-dir", str(tmp_path / "m"), *TINY])
    assert (tmp_path / "m" / "teacher" / "summary.json").is_file()


def _small_selector(tmp_path: Path) -> Path:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("selector:\n  width: 2\n")
    return cfg


def test_an_interrupted_stage_exits_130_and_says_how_to_resume(tmp_path, env):
    module, func = scripts()["teacherTrain"].split(":")
    argv = [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())",
            "--run-dir", str(tmp_path / "run"), *TINY[:-4], "--epochs", "200", "--device", "cpu"]
    # SIGINT back to its default in the child: a suite started in the background (nohup, `&`) hands its
    # children an ignored SIGINT, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # the first epoch is on disk: a resumable run to interrupt
            if "epoch 1/200" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err, err
