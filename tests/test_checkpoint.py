"""Checkpoint safety: atomic writes; every bad file is one clear line, no traceback, no code run."""
import pickle

import pytest
import torch

from moskd.checkpoint import load_checkpoint, save_checkpoint
from moskd.errors import MoskdError
from moskd.models import build_model_from_checkpoint, create_model
from teacher.cli import main as teacher_main

CARD = {"role": "teacher", "arch": "test_small_cnn", "num_classes": 10, "class_names": list("0123456789"),
        "in_chans": 1, "input_size": [1, 8, 8], "mean": [0.3], "std": [0.37], "dataset": "digits"}


@pytest.fixture
def good(tmp_path):
    model = create_model("test_small_cnn", 10, 1)
    path = tmp_path / "good.pt"
    save_checkpoint({"model": model.state_dict(), "ema": None, "card": dict(CARD)}, path)
    return path, model


def test_round_trip_rebuilds_the_model(good):
    path, model = good
    ckpt = load_checkpoint(path, role="teacher", arch="test_small_cnn", num_classes=10)
    rebuilt = build_model_from_checkpoint(ckpt)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed away


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch EXPLOITED",))


def _bad_files(tmp_path, good_path):
    data = good_path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "text": b"this is not a checkpoint\n",
        "empty": b"",
        "pickle with code": pickle.dumps({"model": _Exploit()}),
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(blob)
        yield name, path


def test_bad_files_are_one_clear_error_and_run_no_code(tmp_path, good, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, path in _bad_files(tmp_path, good[0]):
        with pytest.raises(MoskdError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg, name
    assert not (tmp_path / "EXPLOITED").exists()


def test_code_carrying_pickle_is_named_as_such(tmp_path, good):
    path = dict(_bad_files(tmp_path, good[0]))["pickle with code"]
    with pytest.raises(MoskdError, match="beyond tensors"):
        load_checkpoint(path)


@pytest.mark.parametrize("want,match", [
    ({"role": "student"}, "role 'teacher'.*expected role 'student'"),
    ({"arch": "resnet50"}, "arch 'test_small_cnn'.*expected arch 'resnet50'"),
    ({"num_classes": 100}, "num_classes '10'.*expected num_classes '100'"),
])
def test_wrong_card_is_rejected(good, want, match):
    with pytest.raises(MoskdError, match=match):
        load_checkpoint(good[0], **want)


def test_state_dict_without_card_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(create_model("test_small_cnn", 10, 1).state_dict(), path)
    with pytest.raises(MoskdError, match="no model card"):
        load_checkpoint(path)


def test_cli_resume_from_bad_checkpoint_is_one_line_and_keeps_files(tmp_path, good, cli):
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    for name, bad in _bad_files(tmp_path, good[0]):
        last = run / "teacher" / "last.pt"
        last.write_bytes(bad.read_bytes())
        code, out, err = cli(teacher_main, ["--run-dir", str(run), "--resume", "--arch", "test_small_cnn"])
        assert code == 2, name
        assert err.count("\n") == 1 and err.startswith("teacherTrain: error:") and "Traceback" not in err, name
        assert last.read_bytes() == bad.read_bytes(), name  # nothing already written is lost


def test_cli_resume_of_wrong_arch_is_rejected(tmp_path, good, cli):
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    (tmp_path / "run" / "teacher" / "last.pt").write_bytes(good[0].read_bytes())
    code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "run"), "--resume"])  # default arch resnet50
    assert code == 2 and "expected arch 'resnet50'" in err


# ---------------------------------------------------------------- slim checkpoints


FAST = ["--arch", "googlenet", "--limit", "64", "--batch-size", "32", "--eval-batch-size", "64", "--device", "cpu",
        "--epochs", "1"]


def test_keep_last_no_leaves_a_slim_best_and_no_last(tmp_path, cli):
    run = tmp_path / "run"
    code, _, err = cli(teacher_main, ["--run-dir", str(run), "--keep-last", "no", *FAST])
    assert code == 0, err
    out = run / "teacher"
    assert (out / "summary.json").is_file() and not (out / "last.pt").exists()
    best = load_checkpoint(out / "best.pt", role="teacher")
    assert not {"optimizer", "scheduler", "history"} & best.keys() and {"model", "card", "config"} <= best.keys()
    weights = sum(v.numel() * v.element_size() for v in best["model"].values())
    assert (out / "best.pt").stat().st_size < 1.2 * weights  # weights plus a little, no AdamW moments
    code, _, err = cli(teacher_main, ["--run-dir", str(run), "--resume", *FAST])
    assert code == 2 and "--keep-last no" in err and "--force" in err
    code, _, err = cli(teacher_main, ["--run-dir", str(run), *FAST])  # finished: still guarded
    assert code == 2 and "already holds a run" in err


def test_old_fat_best_still_loads_and_clean_slims_it(tmp_path, good, cli):
    from moskd.cli import main as moskd_main

    path, model = good
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()  # real optimizer state, as old best.pt files carried
    stage, unfinished = tmp_path / "run" / "teacher", tmp_path / "run" / "students" / "googlenet"
    old = {"model": model.state_dict(), "ema": None, "card": dict(CARD), "optimizer": opt.state_dict(), "epoch": 0}
    for folder in (stage, unfinished):
        save_checkpoint(old, folder / "best.pt")
        save_checkpoint(old, folder / "last.pt")
    (stage / "summary.json").write_text("{}")
    rebuilt = build_model_from_checkpoint(load_checkpoint(stage / "best.pt", role="teacher"))  # old runs load
    before = (stage / "best.pt").stat().st_size
    code, out, err = cli(moskd_main, ["clean", str(tmp_path / "run")])
    assert code == 0, err
    assert not (stage / "last.pt").exists() and (unfinished / "last.pt").is_file()  # unfinished: resumable
    assert (stage / "best.pt").stat().st_size < before and "optimizer" not in load_checkpoint(stage / "best.pt")
    slimmed = build_model_from_checkpoint(load_checkpoint(stage / "best.pt", role="teacher"))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), slimmed.state_dict().values()))
    code, _, err = cli(moskd_main, ["clean", str(tmp_path / "nowhere")])
    assert code == 2 and "no such run directory" in err


def test_clean_without_a_run_directory_asks_for_one(cli):
    """Issue 20: `moskd clean` alone took the program's name for the run directory."""
    from moskd.cli import main as moskd_main

    code, out, err = cli(moskd_main, ["clean"])
    assert code == 2 and err.count("\n") == 1 and "no run directory given; pass --run-dir RUN" in err, err
    assert "moskd clean: no such" not in err
