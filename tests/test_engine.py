"""The shared training engine through teacherTrain: seeds, resume, run-dir guard, config, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import moskd.engine
from moskd.checkpoint import load_checkpoint
from moskd.data import load_data
from moskd.loader import make_loader
from moskd.engine import Stage, finish, fit
from moskd.settings import TrainConfig
from moskd.runtime import Runtime
from teacher.cli import main as teacher_main

# a small CNN with batch norm and dropout (so the per-epoch RNG handling is exercised); the engine is
# under test here, not an architecture. The torchrun test's subprocesses need a registry name: googlenet.
SLICE = ["--limit", "64", "--batch-size", "32", "--eval-batch-size", "64", "--device", "cpu"]
FAST = ["--arch", "test_small_cnn", *SLICE]
pytestmark = pytest.mark.usefixtures("one_thread")


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
    ckpt = load_checkpoint(out / "best.pt", role="teacher", arch="test_small_cnn")
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
    # a small CNN shows the loop learns as well as a ResNet50 would, in a fraction of the time
    teacher_main(["--run-dir", str(tmp_path / "run"), "--arch", "test_tiny_cnn", "--limit", "400", "--epochs", "3",
                  "--batch-size", "16", "--lr", "0.02", "--device", "cpu"])
    summary = json.loads((tmp_path / "run/teacher/summary.json").read_text())
    assert summary["test_acc"] > 0.5  # chance is 0.1


def test_torchrun_two_processes_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "teacher.cli", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--arch", "googlenet", *SLICE]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run/teacher/metrics.jsonl").read_text().splitlines()[0])
    assert record["world_size"] == 2
    assert load_checkpoint(tmp_path / "run/teacher/best.pt")["card"]["role"] == "teacher"


class Snapshots:
    """A select loader that records the model's weights each time the engine evaluates it."""

    def __init__(self, loader, model):
        self.loader, self.model, self.weights = loader, model, []

    def __iter__(self):
        self.weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def test_best_pt_holds_the_best_select_epoch_and_finish_scores_it(tmp_path):
    """Scripted select scores 0.3, 0.8, 0.8, 0.5: best.pt must hold epoch 2 (the first of the tie),
    not the last epoch, and the test score in summary.json must come from those weights."""
    torch.manual_seed(0)
    data = load_data("digits", limit=32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    scripted, phase = iter([0.3, 0.8, 0.8, 0.5]), {"test": False}

    def metric(logits, batch):
        if model.training:
            return 0.0, len(batch[1])
        if phase["test"]:  # a score that depends on the weights: the mean logit
            return logits.sum().item() / logits.shape[1], len(batch[1])
        return next(scripted) * len(batch[1]), len(batch[1])

    cfg = TrainConfig(run_dir=str(tmp_path), epochs=4, limit=32, batch_size=16, eval_batch_size=32, lr=0.05,
                      warmup_epochs=0, device="cpu")
    select = Snapshots(make_loader(data, "select", 32), model)
    stage = Stage(role="teacher", out_dir=tmp_path / "teacher", model=model,
                  train_loader=make_loader(data, "train", 16, train=True), select_loader=select,
                  objective=moskd.engine.cross_entropy(), card={"role": "teacher", "arch": "linear", **data.card()},
                  metric=metric)
    rt = Runtime(torch.device("cpu"))
    summary = fit(stage, cfg, rt, "test")
    assert (summary["best_epoch"], summary["best_select"]) == (2, 0.8)
    best = load_checkpoint(tmp_path / "teacher/best.pt")["model"]
    assert _same(best, select.weights[1]) and not _same(best, select.weights[2])
    assert not _same(best, select.weights[3])  # not simply the last epoch
    lines = (tmp_path / "teacher/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["best_epoch"] for x in lines] == [1, 2, 2, 2]

    phase["test"] = True
    summary = finish(stage, cfg, rt, summary, make_loader(data, "test", 32))
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ref.load_state_dict(select.weights[1])
    with torch.no_grad():
        x = make_loader(data, "test", 32).__iter__().__next__()[0]
        want = ref(x).mean().item()
    assert summary["test_acc"] == pytest.approx(want, rel=1e-5)


def test_training_flags_reach_the_optimizer_and_the_objective(tmp_path, monkeypatch, cli):
    import teacher.train

    seen, smoothing = {}, []
    real_opt, real_ce = moskd.engine.create_optimizer_v2, teacher.train.cross_entropy

    def opt_spy(model, **kw):
        seen.update(kw)
        seen["optimizer"] = real_opt(model, **kw)
        return seen["optimizer"]

    monkeypatch.setattr(moskd.engine, "create_optimizer_v2", opt_spy)
    monkeypatch.setattr(teacher.train, "cross_entropy", lambda ls=0.0: smoothing.append(ls) or real_ce(ls))
    code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "run"), "--arch", "test_small_cnn", "--limit", "32",
                                      "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--optimizer", "sgd",
                                      "--lr", "0.05", "--weight-decay", "0.01", "--momentum", "0.8",
                                      "--label-smoothing", "0.15"])
    assert code == 0, err
    assert (seen["opt"], seen["lr"], seen["weight_decay"], seen["momentum"]) == ("sgd", 0.05, 0.01, 0.8)
    opt = seen["optimizer"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.8
    assert max(g["weight_decay"] for g in opt.param_groups) == 0.01
    assert smoothing == [0.15]


def test_objective_owns_the_forward_and_its_named_parts_are_logged(tmp_path):
    """The loop minimises parts["loss"] and logs every other part per epoch as train_loss_<name>,
    the image-weighted mean over the epoch's batches."""
    torch.manual_seed(0)
    data = load_data("digits", limit=32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    seen = []

    def objective(m, batch, prec):
        logits = prec.forward(m, batch[0])
        ce = torch.nn.functional.cross_entropy(logits, batch[1])
        seen.append(len(batch[1]))
        return moskd.engine.LossOutput(logits, {"loss": 2 * ce, "ce": ce, "const": torch.tensor(float(len(seen)))})

    cfg = TrainConfig(run_dir=str(tmp_path), epochs=1, limit=32, batch_size=20, eval_batch_size=32, lr=0.05,
                      warmup_epochs=0, device="cpu")
    stage = Stage(role="teacher", out_dir=tmp_path / "t", model=model,
                  train_loader=make_loader(data, "train", 20, train=True), select_loader=make_loader(data, "select", 32),
                  objective=objective, card={"role": "teacher", "arch": "linear", **data.card()})
    fit(stage, cfg, Runtime(torch.device("cpu")), "test")
    row = json.loads((tmp_path / "t/metrics.jsonl").read_text().splitlines()[0])
    assert seen == [20, len(data.splits["train"].targets) - 20]
    assert row["train_loss"] == pytest.approx(2 * row["train_loss_ce"], rel=1e-6)
    assert row["train_loss_const"] == pytest.approx((1 * 20 + 2 * seen[1]) / sum(seen))


def test_fractional_warmup_ends_on_its_update_then_decays():
    """--warmup-epochs 0.4 with 10 updates per epoch: linear warm-up over 4 updates, then the cosine."""
    from moskd.sections import parse_config
    from teacher.config import TeacherConfig

    cfg = parse_config(TeacherConfig, ["--warmup-epochs", "0.4", "--epochs", "2", "--lr", "0.1"], "teacherTrain", "",
                       "teacher")
    assert cfg.warmup_epochs == pytest.approx(0.4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = moskd.engine._scheduler(cfg, opt, steps_per_epoch=10)
    lrs = []
    for update in range(20):
        sched.step_update(update)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(cfg.lr / 100) and lrs[0] < lrs[1] < lrs[2] < lrs[3] < cfg.lr  # warming up
    assert max(lrs) == pytest.approx(lrs[4]) and lrs[4] > 0.09  # warm-up over at update 4: at (nearly) the peak
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # then only down
