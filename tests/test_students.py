"""Stage 2: KD losses, the shared teacher-logit cache, StudentTrain, the sweep and the curves.

A tiny registered CNN stands in for the teacher (trained by teacherTrain for one epoch on a
48-image slice, once per module) and for the student wherever the architecture does not matter;
the two real students (densenet121, googlenet) run one step each.
"""
import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import students.train
from moskd.checkpoint import load_checkpoint, read_checkpoint_file, save_checkpoint
from moskd.data import load_data
from moskd.loader import make_loader
from moskd.models import register_model
from moskd.loaded import load_teacher
from moskd.runtime import Runtime
from students.cache import cache_key, choose_views
from students.teacher_outputs import load_or_build
from students.losses import distillation_loss
from students.cli import sweep_main
from students.cli import main as student_main
from teacher.cli import main as teacher_main

LIMIT = 48
SLICE = ["--limit", str(LIMIT), "--batch-size", "48", "--eval-batch-size", "48", "--device", "cpu", "--epochs", "1"]
CPU = Runtime(torch.device("cpu"))
pytestmark = pytest.mark.usefixtures("one_thread")  # small inputs: thread hand-offs cost more than they save
TINY = "test_students_tiny"


@register_model(TINY)
def tiny(num_classes: int, in_chans: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, num_classes))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory holding a trained (if barely) teacher."""
    run = tmp_path_factory.mktemp("run")
    teacher_main(["--run-dir", str(run), "--arch", TINY, *SLICE])
    return run


@pytest.fixture(scope="module")
def data():
    return load_data("digits", limit=LIMIT)


# ---------------------------------------------------------------- losses


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


S = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]
T_ = [[3.0, 0.0, 1.0], [0.1, 0.4, 2.0]]
Y = [2, 1]


def _kl_reference(temperature):
    """T^2 * mean over rows of sum_c p_t log(p_t / p_s), by hand."""
    total = 0.0
    for s, t in zip(S, T_):
        ps, pt = _softmax(s, temperature), _softmax(t, temperature)
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    return temperature**2 * total / len(S)


def _ce_reference(smoothing=0.0):
    total = 0.0
    for s, y in zip(S, Y):
        logp = [math.log(p) for p in _softmax(s, 1.0)]
        k = len(s)
        total += -sum(((1 - smoothing) * (c == y) + smoothing / k) * lp for c, lp in enumerate(logp))
    return total / len(S)


def _loss(**kw):  # float64: at T = 20 the KL is tiny and float32 rounding would show after the T^2
    return distillation_loss(torch.tensor(S, dtype=torch.float64), torch.tensor(T_, dtype=torch.float64),
                             torch.tensor(Y), **kw)["loss"].item()


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kl_term_is_t_squared_scaled_batchmean_kl(temperature):
    assert _loss(alpha=0.0, temperature=temperature) == pytest.approx(_kl_reference(temperature), rel=1e-5)


def test_alpha_mixes_hard_and_soft_terms():
    assert _loss(alpha=1.0, temperature=4.0) == pytest.approx(_ce_reference(), rel=1e-6)
    mixed = 0.3 * _ce_reference() + 0.7 * _kl_reference(4.0)
    assert _loss(alpha=0.3, temperature=4.0) == pytest.approx(mixed, rel=1e-5)


def test_alpha_one_ignores_the_teacher_and_smoothing_applies_to_ce():
    parts = distillation_loss(torch.tensor(S), None, torch.tensor(Y), alpha=1.0, label_smoothing=0.1)
    assert parts["loss"].item() == pytest.approx(_ce_reference(0.1), rel=1e-6) and "kd" not in parts


def test_mse_variant_matches_raw_logits():
    mse = sum((a - b) ** 2 for s, t in zip(S, T_) for a, b in zip(s, t)) / 6
    assert _loss(alpha=0.0, kd_loss="mse", temperature=7.0) == pytest.approx(mse, rel=1e-6)  # no T
    assert _loss(alpha=0.5, kd_loss="mse") == pytest.approx(0.5 * _ce_reference() + 0.5 * mse, rel=1e-6)


def test_loss_parts_are_reported_apart():
    parts = distillation_loss(torch.tensor(S, dtype=torch.float64), torch.tensor(T_, dtype=torch.float64),
                              torch.tensor(Y), alpha=0.3, temperature=4.0)
    assert parts["ce"].item() == pytest.approx(_ce_reference(), rel=1e-6)
    assert parts["kd"].item() == pytest.approx(_kl_reference(4.0), rel=1e-5)


def test_per_image_weights_give_the_weighted_mean_of_each_term():
    """sum(w * l) / sum(w) for CE and KD, by hand: image 0 weighs 1, image 1 weighs 0.25."""
    w = [1.0, 0.25]
    ce = [-math.log(_softmax(s, 1.0)[y]) for s, y in zip(S, Y)]
    kl = [16 * sum(b * math.log(b / a) for a, b in zip(_softmax(s, 4.0), _softmax(t, 4.0))) for s, t in zip(S, T_)]
    mean = lambda v: sum(a * b for a, b in zip(w, v)) / sum(w)  # noqa: E731
    parts = distillation_loss(torch.tensor(S, dtype=torch.float64), torch.tensor(T_, dtype=torch.float64),
                              torch.tensor(Y), alpha=0.4, temperature=4.0, weights=torch.tensor(w))
    assert parts["ce"].item() == pytest.approx(mean(ce), rel=1e-6)
    assert parts["kd"].item() == pytest.approx(mean(kl), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(0.4 * mean(ce) + 0.6 * mean(kl), rel=1e-5)
    uniform = distillation_loss(torch.tensor(S), torch.tensor(T_), torch.tensor(Y), alpha=0.4, temperature=4.0,
                                weights=torch.tensor([0.5, 0.5]))["loss"]
    plain = distillation_loss(torch.tensor(S), torch.tensor(T_), torch.tensor(Y), alpha=0.4, temperature=4.0)["loss"]
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-6)


def test_kd_losses_are_one_explicit_table():
    from students.config import StudentConfig
    from moskd.values import choices_of
    from students.losses import KD_LOSSES, kd_kl, kd_mse

    assert KD_LOSSES == {"kl": kd_kl, "mse": kd_mse}
    assert list(choices_of(StudentConfig)["kd_loss"][0]()) == ["kl", "mse"]  # the flag's choices read the table


def test_kl_gradient_reaches_the_student_only():
    s = torch.tensor(S, requires_grad=True)
    distillation_loss(s, torch.tensor(T_), torch.tensor(Y), alpha=0.0, temperature=2.0)["loss"].backward()
    # d/ds of T^2 KL(p_t || softmax(s/T)) averaged over B rows = T (softmax(s/T) - p_t) / B
    want = 2.0 * (F.softmax(torch.tensor(S) / 2, 1) - F.softmax(torch.tensor(T_) / 2, 1)) / 2
    assert torch.allclose(s.grad, want, atol=1e-6)


# ---------------------------------------------------------------- cache


def test_few_distinct_views_are_enumerated_not_sampled(data):
    views = choose_views(5, 10, data.aug, seed=0)  # digits: 3 x 3 shifts, no flip
    assert views.shape == (5, 9, 3) and views.dtype == torch.int16
    assert len({tuple(v.tolist()) for v in views[0]}) == 9
    few = choose_views(5, 4, data.aug, seed=0)
    assert few.shape == (5, 4, 3) and few[..., :2].abs().max() <= 1 and (few[..., 2] == 0).all()


@pytest.mark.parametrize("k", [3, 10])
def test_cached_logits_equal_the_online_teachers_for_the_same_view(run_dir, data, tmp_path, k):
    tpath = run_dir / "teacher/best.pt"
    teacher, _ = load_teacher(tpath, like=data.card())
    views = load_or_build(tmp_path / "c", cache_key(tpath, data, k, 0), teacher, data, batch_size=50, rt=CPU)
    assert views[1].array.dtype.base == np.float16 and views[1].shape[:2] == views[0].shape[:2]
    loader = make_loader(data, "train", 16, train=True, views=views, seed=3)
    checked = 0
    for batch in loader:
        with torch.inference_mode():
            online = teacher(batch[0])
        assert torch.allclose(batch[-1], online, atol=1e-2, rtol=1e-2)
        checked += len(batch[1])
    assert checked == LIMIT


def test_changed_teacher_or_data_rebuilds_the_cache(run_dir, data, tmp_path, capsys):
    tpath = tmp_path / "teacher.pt"
    tpath.write_bytes((run_dir / "teacher/best.pt").read_bytes())
    path = tmp_path / "cache"

    def build(d=data):
        teacher, _ = load_teacher(tpath, like=d.card())
        return load_or_build(path, cache_key(tpath, d, 10, 0), teacher, d, batch_size=64, rt=CPU)

    first = build()
    build()
    assert "reused" in capsys.readouterr().out
    ckpt = read_checkpoint_file(tpath)
    ckpt["model"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, tpath)  # same card, other weights: only the file hash tells
    second = build()
    assert "teacher checkpoint changed; computing" in capsys.readouterr().out
    assert not np.allclose(first[1].array.astype(np.float32), second[1].array.astype(np.float32))
    other = load_data("digits", limit=LIMIT, split_seed=1)
    build(other)
    assert "training data" in capsys.readouterr().out  # (and its mean/std: the teacher's preprocessing)


# ---------------------------------------------------------------- StudentTrain


@pytest.mark.parametrize("model,arch", [("1", "densenet121"), ("2", "googlenet")])
def test_both_students_distil_from_a_teacher_checkpoint(run_dir, model, arch, cli):
    # 16 images: one step of a real student (a teacher trained on 48 images is renormalised to them)
    tiny_slice = ["--limit", "16", "--batch-size", "16", "--eval-batch-size", "16", "--device", "cpu", "--epochs", "1"]
    code, out, err = cli(student_main, ["--run-dir", str(run_dir), "--model", model, *tiny_slice])
    assert code == 0, err
    folder = run_dir / "students" / arch
    best = load_checkpoint(folder / "best.pt", role="student", arch=arch, num_classes=10, dataset="digits")
    dist = best["card"]["distillation"]
    assert dist["teacher"] == str(run_dir / "teacher/best.pt") and dist["kd_loss"] == "kl"
    assert dist["teacher_cache"] == 10 and 0 < dist["alpha"] < 1
    assert_curves_drawn(folder / "curves.png")
    assert len(list((run_dir / "teacher/cache").iterdir())) == 1  # one cache file, shared
    assert "teacher cache" in out


def test_second_student_reuses_the_shared_cache(run_dir, cli):
    cli(student_main, ["--run-dir", str(run_dir), "--model", TINY, *SLICE, "--force"])
    code, out, err = cli(student_main, ["--run-dir", str(run_dir), "--model", TINY, *SLICE, "--force"])
    assert code == 0, err
    assert "reused" in out and "computing" not in out


def spy_on_loss(monkeypatch) -> list[dict]:
    """Record the settings and teacher logits of every distillation_loss call the objectives make."""
    import students.losses

    calls, real = [], students.losses.distillation_loss

    def spy(student, teacher, targets, **kw):
        calls.append({**kw, "teacher": None if teacher is None else teacher.detach().float().clone(),
                      "n": len(targets)})
        return real(student, teacher, targets, **kw)

    monkeypatch.setattr(students.losses, "distillation_loss", spy)
    return calls


def test_cached_run_hands_alpha_temperature_and_smoothing_to_the_loss(run_dir, cli, monkeypatch):
    calls = spy_on_loss(monkeypatch)
    code, _, err = cli(student_main, ["--run-dir", str(run_dir), "--model", TINY, "--alpha", "0.3", "--temperature",
                                      "7", "--label-smoothing", "0.1", *SLICE, "--epochs", "2", "--force"])
    assert code == 0, err
    assert len(calls) == 2 and sum(c["n"] for c in calls) == 2 * LIMIT  # one full-slice step per epoch
    for c in calls:
        assert (c["alpha"], c["temperature"], c["kd_loss"], c["label_smoothing"]) == (0.3, 7.0, "kl", 0.1)
    # the teacher term is fed the cached fp16 logits of each image's view
    cache = np.fromfile(run_dir / "teacher/cache/views-k10/outputs.bin", np.float16)
    rows = torch.from_numpy(cache.astype(np.float32)).view(-1, 10)
    for c in calls:
        assert all((rows == t).all(1).any() for t in c["teacher"])
    dist = load_checkpoint(run_dir / f"students/{TINY}/best.pt")["card"]["distillation"]
    assert (dist["alpha"], dist["temperature"]) == (0.3, 7.0)


def test_online_teacher_trains_too(run_dir, cli, monkeypatch):
    calls = spy_on_loss(monkeypatch)
    code, _, err = cli(student_main, ["--run-dir", str(run_dir), "--model", TINY, "--teacher-cache", "0",
                                      "--kd-loss", "mse", "--alpha", "0.2", *SLICE, "--force"])
    assert code == 0, err
    assert not (run_dir / "teacher/cache/views-k0").exists()
    assert calls and all((c["alpha"], c["kd_loss"]) == (0.2, "mse") for c in calls)
    assert all(c["teacher"] is not None and c["teacher"].shape == (c["n"], 10) for c in calls)


def test_no_teacher_never_loads_a_teacher(tmp_path, monkeypatch, cli):
    def refuse(*a, **k):
        raise AssertionError("the baseline loaded a teacher")

    monkeypatch.setattr(students.train, "load_teacher", refuse)
    code, _, err = cli(student_main, ["--run-dir", str(tmp_path), "--model", TINY, "--no-teacher", *SLICE])
    assert code == 0, err
    card = load_checkpoint(tmp_path / f"students/{TINY}-baseline/best.pt")["card"]
    assert card["distillation"]["teacher"] is None and card["distillation"]["alpha"] == 1.0
    assert not (tmp_path / "teacher").exists() and not (tmp_path / f"students/{TINY}").exists()


def test_missing_teacher_says_which_command_to_run(tmp_path, cli):
    code, _, err = cli(student_main, ["--run-dir", str(tmp_path), *SLICE])
    assert code == 2 and err.count("\n") == 1
    assert f"teacherTrain --run-dir {tmp_path}" in err


def test_model_3_lists_the_valid_choices(tmp_path, cli):
    code, _, err = cli(student_main, ["--run-dir", str(tmp_path), "--model", "3", *SLICE])
    assert code == 2 and err.count("\n") == 1
    assert "1 (densenet121)" in err and "2 (googlenet)" in err


@pytest.mark.parametrize("field,value", [("num_classes", 5), ("dataset", "cifar10")])
def test_teacher_of_another_dataset_fails_with_one_line(run_dir, tmp_path, cli, field, value):
    ckpt = read_checkpoint_file(run_dir / "teacher/best.pt")
    ckpt["card"][field] = value
    save_checkpoint(ckpt, tmp_path / "other.pt")
    code, _, err = cli(student_main, ["--run-dir", str(tmp_path), "--teacher", str(tmp_path / "other.pt"), *SLICE])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{field} '{value}'" in err and "--no-teacher" in err


def test_teacher_split_another_way_is_refused(run_dir, tmp_path, cli):
    code, _, err = cli(student_main, ["--run-dir", str(tmp_path), "--teacher", str(run_dir / "teacher/best.pt"),
                                      "--split-seed", "3", *SLICE])
    assert code == 2 and err.count("\n") == 1 and "--split-seed 0" in err
    assert not (tmp_path / "students").exists()


# ---------------------------------------------------------------- sweep and curves


def test_sweep_writes_mean_and_std_over_seeds(run_dir, cli):
    code, out, err = cli(sweep_main, ["--run-dir", str(run_dir), "--model", TINY, "--temperatures", "2",
                                      "--alphas", "0.5", "1", "--seeds", "0", "1", *SLICE])
    assert code == 0, err
    folder = run_dir / "sweep"
    rows = list(csv.DictReader(open(folder / f"{TINY}-results.csv")))
    assert [r["name"] for r in rows] == [f"{TINY}-T2-a0.5", f"{TINY}-baseline"]
    assert all(r["seeds"] == "2" for r in rows)
    runs = list(csv.DictReader(open(folder / f"{TINY}-runs.csv")))
    accs = [float(r["test_acc_best"]) for r in runs if r["name"] == f"{TINY}-T2-a0.5"]
    assert float(rows[0]["test_acc_best_mean"]) == pytest.approx(sum(accs) / 2)
    assert "±" in (folder / f"{TINY}-results.md").read_text()
    assert (folder / f"{TINY}-baseline-s1/best.pt").exists()
    code, out, _ = cli(sweep_main, ["--run-dir", str(run_dir), "--model", TINY, "--temperatures", "2",
                                    "--alphas", "0.5", "1", "--seeds", "0", "1", *SLICE])
    assert code == 0 and out.count("reusing") == 4  # a finished sweep is not retrained


def assert_curves_drawn(path):
    """A decodable 900x350 figure (9 x 3.5 inches at 100 dpi) with something drawn on it."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 350)
        lo, hi = im.convert("L").getextrema()
    assert hi - lo > 100  # lines and text, not a blank canvas


def test_teacher_gets_curves_too(run_dir):
    assert_curves_drawn(run_dir / "teacher/curves.png")
