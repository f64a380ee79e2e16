"""The streaming backend on small folders the tests make: the same batches as the in-memory path,
disjoint DDP shards, a bit-exact resume after a mid-epoch interruption, bad files skipped and named,
an empty class folder refused; views replayable from (seed, epoch, image index)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import moskd.streaming
from moskd.checkpoint import load_checkpoint
from moskd.data import choose_backend, load_data
from moskd.errors import MoskdError
from moskd.loader import make_loader
from moskd.views import crop_view, eval_view, view_generator
from teacher.cli import main as teacher_main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parent.parent


def make_folder(root: Path, per_class: int = 10, size=(20, 24), classes=("a", "b", "c")) -> Path:
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = rng.integers(0, 120, (*size, 3), dtype=np.uint8)
            px[..., k % 3] += 120  # a learnable colour per class
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


def batches(data, split, train, seed=3, **kw):
    return [[t.clone() for t in b] for b in make_loader(data, split, 4, train=train, seed=seed, **kw)]


def test_streamed_and_in_memory_batches_are_identical_for_shift_and_flip(tmp_path):
    folder = make_folder(tmp_path / "f")
    memory = load_data(f"folder:{folder}", image_size=16, max_ram=1.0)
    stream = load_data(f"folder:{folder}", image_size=16, max_ram=0)  # a zero budget: streamed
    assert (memory.backend, stream.backend) == ("memory", "stream")
    assert stream.card()["data_backend"] == "stream" and stream.input_size == memory.input_size == [3, 16, 16]
    # mean/std: the stream takes them from a sample (here all 18 training images, in float64)
    assert stream.mean == pytest.approx(memory.mean, abs=1e-6) and stream.std == pytest.approx(memory.std, abs=1e-4)
    stream.mean, stream.std = memory.mean, memory.std
    for split in ("train", "select", "test"):
        for train in (True, False):
            for epoch in (0, 1):
                a, b = make_loader(memory, split, 4, train=train, seed=3), make_loader(stream, split, 4, train=train,
                                                                                      seed=3)
                a.set_epoch(epoch), b.set_epoch(epoch)
                pairs = list(zip(a, b, strict=True))
                assert pairs and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in pairs)


def test_backend_choice_follows_the_budget_and_the_view_recipe(tmp_path):
    listing = ((np.zeros(1000, "S1"), np.zeros(1000)), None, ["a", "b"])
    assert choose_backend(listing, 32, max_ram=1.0) == "memory"  # 3 MB decoded
    assert choose_backend(listing, 32, max_ram=0.001) == "stream"  # over a 1 MiB budget
    assert choose_backend(listing, 64, max_ram=1.0) == "stream"  # crop views come from the files


def test_folder_size_is_probed_not_squashed_to_32(tmp_path, capsys):
    folder = make_folder(tmp_path / "f", per_class=4, size=(40, 48))
    d = load_data(f"folder:{folder}", max_ram=1.0)
    assert d.input_size == [3, 40, 40] and "training at 40x40 px" in capsys.readouterr().err


def test_crop_views_are_records_replayed_from_seed_epoch_and_index():
    a = crop_view(300, 200, view_generator(7, 2, 123))
    assert a == crop_view(300, 200, view_generator(7, 2, 123))
    others = {crop_view(300, 200, view_generator(7, e, i)) for e in range(3) for i in range(20)}
    assert len(others) == 60  # every (epoch, index) its own view
    for top, left, h, w, flip in others:
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 200 and flip in (0, 1)
        assert 0.08 * 300 * 200 * 0.9 <= h * w <= 300 * 200 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    assert eval_view(256, 320, 224) == (16, 48, 224, 224, 0)  # resize 256 + center crop 224, in source px


def test_crop_views_at_64_px_and_above_come_with_their_records(tmp_path):
    folder = make_folder(tmp_path / "f", per_class=3, size=(70, 90), classes=("a", "b"))
    d = load_data(f"folder:{folder}", image_size=64, select_fraction=0.25, test_fraction=0.25)
    assert d.backend == "stream"
    first, again = batches(d, "train", True), batches(d, "train", True)
    x, _, views = first[0]
    assert x.shape[1:] == (3, 64, 64) and views.shape == (len(x), 5)
    assert all(torch.equal(p, q) for b1, b2 in zip(first, again) for p, q in zip(b1, b2))
    x_eval = batches(d, "test", False)[0][0]
    assert x_eval.shape[1:] == (3, 64, 64)


def two_processes(script: str, folder: Path, tmp_path: Path, port: int) -> dict:
    """`script FOLDER OUT.json` under a 2-process gloo torchrun; what rank 0 wrote."""
    (tmp_path / "script.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(tmp_path / "script.py"), str(folder), str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / "out.json").read_text())


SHARDS = """
import json, sys, torch, torch.distributed as dist
from moskd.data import load_data
from moskd.loader import make_loader
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
d = load_data("folder:" + sys.argv[1], image_size=16, max_ram=0, workers=1)
out = {}
for split, train in (("train", True), ("test", False)):
    n = len(d.splits[split])
    ld = make_loader(d, split, 4, train=train, seed=5, rank=rank, world=world, extras=(torch.arange(n),))
    mine = [int(i) for b in ld for i in b[2]]
    got = [None] * world
    dist.all_gather_object(got, mine)
    out[split] = {"n": n, "shards": got}
if rank == 0:
    json.dump(out, open(sys.argv[2], "w"))
dist.barrier()  # both ranks done before either tears gloo down (a rank left alone aborts)
dist.destroy_process_group()
"""


def test_two_process_gloo_shards_of_a_streamed_folder_are_disjoint_and_cover_it(tmp_path):
    folder = make_folder(tmp_path / "f", per_class=9)
    out = two_processes(SHARDS, folder, tmp_path, port=29533)
    test = out["test"]
    a, b = test["shards"]
    assert not set(a) & set(b) and sorted(a + b) == list(range(test["n"]))  # eval: disjoint, unpadded
    train = out["train"]
    a, b = train["shards"]
    assert len(a) == len(b) == -(-train["n"] // 2) and set(a) | set(b) == set(range(train["n"]))
    assert len(set(a) & set(b)) == 2 * len(a) - train["n"]  # only the wrap-around padding repeats


SKIPS = """
import json, sys, torch.distributed as dist
from moskd.data import load_data
from moskd.loader import make_loader
from moskd.runtime import union_across_ranks
dist.init_process_group("gloo")
d = load_data("folder:" + sys.argv[1], image_size=16, max_ram=0, select_fraction=0.2, test_fraction=0.2)
ld = make_loader(d, "train", 4, train=True, seed=5, rank=dist.get_rank(), world=dist.get_world_size())
for _ in ld:
    pass
mine, every = sorted(ld.skipped), sorted(union_across_ranks(ld.skipped))
got = [None] * dist.get_world_size()
dist.all_gather_object(got, {"mine": mine, "union": every})
if dist.get_rank() == 0:
    json.dump({"ranks": got, "train": sorted(p.decode() for p in d.splits["train"].paths)}, open(sys.argv[2], "w"))
dist.barrier()  # both ranks done before either tears gloo down (a rank left alone aborts)
dist.destroy_process_group()
"""


def test_under_two_processes_each_ranks_skipped_files_count_once_in_the_union(tmp_path):
    # the stage summary's skipped_files (moskd.engine.finish) is this union, not rank 0's own share
    folder = make_folder(tmp_path / "f", per_class=8)
    for c in ("a", "b", "c"):
        for i in range(2):
            (folder / c / f"empty{i}.png").write_bytes(b"")
    out = two_processes(SKIPS, folder, tmp_path, port=29534)
    empty_in_train = {p for p in out["train"] if "empty" in p}
    assert len(empty_in_train) >= 2
    r0, r1 = out["ranks"]
    assert set(r0["union"]) == set(r1["union"]) == empty_in_train
    assert set(r0["mine"]) != empty_in_train or set(r1["mine"]) != empty_in_train  # one rank alone misses some


class Interrupt(Exception):
    pass


def test_a_run_interrupted_mid_epoch_and_resumed_is_bit_exact(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "f", per_class=12)
    args = ["--dataset", f"folder:{folder}", "--image-size", "16", "--max-ram", "0", "--arch", "test_small_cnn",
            "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--lr", "0.01"]
    teacher_main(["--run-dir", str(tmp_path / "whole"), *args])
    iterate = moskd.streaming.StreamLoader.__iter__

    def dies_mid_second_epoch(self):
        for k, batch in enumerate(iterate(self)):
            if self.train and self.epoch == 1 and k == 2:
                raise Interrupt  # as a kill: last.pt holds epoch 1, epoch 2 half done
            yield batch

    monkeypatch.setattr(moskd.streaming.StreamLoader, "__iter__", dies_mid_second_epoch)
    with pytest.raises(Interrupt):
        teacher_main(["--run-dir", str(tmp_path / "cut"), *args])
    monkeypatch.setattr(moskd.streaming.StreamLoader, "__iter__", iterate)
    teacher_main(["--run-dir", str(tmp_path / "cut"), *args, "--resume", "--workers", "2"])  # workers: no effect
    whole, cut = (load_checkpoint(tmp_path / r / "teacher/last.pt") for r in ("whole", "cut"))
    assert cut["epoch"] == whole["epoch"] == 1
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])


def bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind that cannot be decoded, in class `a`."""
    good = folder / "a" / "0.png"
    jpeg = folder / "a" / "whole.jpg"
    Image.open(good).save(jpeg)
    bad = {"empty": folder / "a" / "empty.png", "truncated": folder / "a" / "truncated.jpg",
           "text": folder / "a" / "notes.jpg", "bomb": folder / "a" / "bomb.png",
           "unreadable": folder / "a" / "gone.png"}
    bad["empty"].write_bytes(b"")
    bad["truncated"].write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    bad["text"].write_text("not an image\n")
    Image.new("RGB", (400, 300)).save(bad["bomb"])  # over the MAX_PIXELS the test sets
    bad["unreadable"].symlink_to(folder / "nowhere.png")  # a dangling link: listed, cannot be opened
    jpeg.unlink()
    return bad


def test_bad_files_in_a_streamed_folder_are_skipped_named_once_and_counted(tmp_path, monkeypatch, cli):
    folder = make_folder(tmp_path / "f", per_class=8)
    bad = bad_files(folder)
    monkeypatch.setattr(moskd.streaming, "MAX_PIXELS", 100_000)  # 400 x 300 = 120,000 px: a "bomb"
    run = tmp_path / "run"
    code, _, err = cli(teacher_main, ["--run-dir", str(run), "--dataset", f"folder:{folder}", "--image-size", "16",
                                      "--max-ram", "0", "--arch", "test_small_cnn", "--epochs", "2", "--batch-size",
                                      "4", "--device", "cpu", "--select-fraction", "0.3", "--test-fraction", "0.3"])
    assert code == 0, err
    for kind, path in bad.items():
        lines = [ln for ln in err.splitlines() if "skipped" in ln and str(path) in ln]
        assert len(lines) == 1, (kind, err)  # once, though training met it in both epochs
    assert json.loads((run / "teacher/summary.json").read_text())["skipped_files"] == len(bad)


def test_an_empty_class_folder_is_refused_in_one_line(tmp_path, cli):
    folder = make_folder(tmp_path / "f", per_class=4)
    (folder / "empty").mkdir()
    code, _, err = cli(teacher_main, ["--run-dir", str(tmp_path / "run"), "--dataset", f"folder:{folder}",
                                      "--max-ram", "0", "--device", "cpu"])
    assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_folder_in_memory_is_decoded_once_per_run(tmp_path, monkeypatch):
    import moskd.data

    folder = make_folder(tmp_path / "f", per_class=5)
    first = load_data(f"folder:{folder}", image_size=16, max_ram=1.0, decoded_dir=tmp_path / "run/data")
    assert len(list((tmp_path / "run/data").glob("folder-*-train.npy"))) == 1

    def no_decoding(*a):
        raise AssertionError("decoded again")

    decode = moskd.data.decode_folder
    monkeypatch.setattr(moskd.data, "decode_folder", no_decoding)
    again = load_data(f"folder:{folder}", image_size=16, max_ram=1.0, decoded_dir=tmp_path / "run/data")
    for k in first.splits:
        assert torch.equal(first.splits[k].images, again.splits[k].images)
    assert first.mean == again.mean and first.fingerprint() == again.fingerprint()
    Image.new("RGB", (20, 24), (1, 2, 3)).save(folder / "a" / "0.png")  # another file: decoded afresh
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(f"folder:{folder}", image_size=16, max_ram=1.0, decoded_dir=tmp_path / "run/data")
    monkeypatch.setattr(moskd.data, "decode_folder", decode)


@pytest.mark.parametrize("world", [1, 2])
def test_a_training_batch_of_unreadable_files_under_ddp_repeats_the_last_one(tmp_path, world):
    # under DDP every rank must take as many steps as the others: a batch whose every file is bad is
    # the rank's previous batch again (one process alone just skips it)
    folder = make_folder(tmp_path / "f", per_class=8)
    d = load_data(f"folder:{folder}", image_size=16, max_ram=0, select_fraction=0.2, test_fraction=0.2)
    ld = make_loader(d, "train", 2, train=True, seed=5, rank=world - 1, world=world)
    idx = ld._indices(torch.Generator().manual_seed(ld.seed * 100_003 + ld.epoch))
    clean = [[t.clone() for t in b] for b in ld]
    for j in idx[2:4].tolist():  # the rank's second batch
        Path(d.splits["train"].paths[j].decode()).write_bytes(b"")
    got = [[t.clone() for t in b] for b in ld]
    assert len(clean) == len(ld)
    if world == 1:
        assert len(got) == len(clean) - 1 and all(torch.equal(a[0], b[0]) for a, b in zip(got[1:], clean[2:]))
    else:
        assert len(got) == len(clean)
        assert all(torch.equal(a, b) for a, b in zip(got[1], clean[0]))  # the first batch again
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got[2:], clean[2:]))
        for j in idx[0:2].tolist():  # now the first batch too: no batch to repeat, one line instead of a hang
            Path(d.splits["train"].paths[j].decode()).write_bytes(b"")
        with pytest.raises(MoskdError, match="rank 1: every file of its first training batch"):
            list(ld)
