"""Splits, augmentation and dataset loaders (digits, a CIFAR-format fixture, an image folder)."""
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from moskd.data import load_data
from moskd.views import AugSpec
from moskd.loader import make_loader
from moskd.views import apply_views, sample_views
from moskd.errors import MoskdError


def _ids(data, split):
    return set(data.splits[split].index.tolist())


def test_digits_splits_disjoint_cover_and_reproducible():
    a, b = load_data("digits"), load_data("digits")
    train, select, test = (_ids(a, s) for s in ("train", "select", "test"))
    assert not (train & select) and not (train & test) and not (select & test)
    assert len(train | select | test) == 1797  # every digit lands in exactly one split
    for s in ("train", "select", "test"):
        assert torch.equal(a.splits[s].index, b.splits[s].index)
        assert torch.equal(a.splits[s].images, b.splits[s].images)
    assert a.input_size == [1, 8, 8] and a.num_classes == 10 and not a.aug.flip


def test_split_seed_changes_the_split_and_limit_slices():
    a, b = load_data("digits", split_seed=0), load_data("digits", split_seed=1)
    assert _ids(a, "test") != _ids(b, "test")
    small = load_data("digits", limit=50)
    assert all(len(s) == 50 for s in small.splits.values())
    assert torch.equal(small.splits["train"].index, a.splits["train"].index[:50])


def test_select_fraction_is_honoured():
    d = load_data("digits", select_fraction=0.25, test_fraction=0.2)
    n_pool = len(d.splits["train"]) + len(d.splits["select"])
    assert abs(len(d.splits["select"]) / n_pool - 0.25) < 0.01


def test_apply_views_shifts_with_zero_fill_and_flips():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    right = apply_views(x, torch.tensor([[1, 0, 0]]), pad=1)  # crop window one pixel right
    assert right[0, 0, :, :3].tolist() == x[0, 0, :, 1:].tolist() and right[0, 0, :, 3].eq(0).all()
    down = apply_views(x, torch.tensor([[0, -1, 0]]), pad=1)  # window one pixel up: content moves down
    assert down[0, 0, 0].eq(0).all() and down[0, 0, 1:].tolist() == x[0, 0, :3].tolist()
    flipped = apply_views(x, torch.tensor([[0, 0, 1]]), pad=1)
    assert flipped.tolist() == x.flip(-1).tolist()
    same = apply_views(x, torch.tensor([[0, 0, 0]]), pad=2)
    assert torch.equal(same, x)


def test_sample_views_respects_spec():
    g = torch.Generator().manual_seed(0)
    v = sample_views(1000, AugSpec(pad=1, flip=False), g)
    assert v[:, :2].abs().max() == 1 and v[:, 2].eq(0).all()
    v = sample_views(1000, AugSpec(pad=4, flip=True), g)
    assert v[:, :2].abs().max() == 4 and set(v[:, 2].tolist()) == {0, 1}


def test_loader_epochs_reproducible_and_distinct():
    d = load_data("digits", limit=100)
    loader = make_loader(d, "train", 32, train=True, seed=3)
    loader.set_epoch(1)
    first = [b[0] for b in loader]
    second = [b[0] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    loader.set_epoch(2)
    assert not torch.equal(first[0], next(iter(loader))[0])


def test_loader_ddp_shards_cover_the_split():
    d = load_data("digits", limit=101)
    seen = []
    for rank in range(2):
        loader = make_loader(d, "train", 16, train=True, rank=rank, world=2, extras=[d.splits["train"].index])
        seen.append(torch.cat([b[2] for b in loader]))
    assert len(seen[0]) == len(seen[1]) == 51  # padded to equal length, as DistributedSampler does
    assert set(torch.cat(seen).tolist()) == set(d.splits["train"].index.tolist())
    evals = [torch.cat([b[2] for b in make_loader(d, "test", 16, rank=r, world=2,
                                                  extras=[d.splits["test"].index])]) for r in range(2)]
    assert len(evals[0]) + len(evals[1]) == 101 and not set(evals[0].tolist()) & set(evals[1].tolist())


def _write_cifar10(root, n_train=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, (n_train, 3072), dtype=np.uint8),
                 "labels": [(j + i) % 10 for j in range(n_train)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": list(range(n_test))}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return test


def test_cifar10_loader_reads_file_compatible_fixture(tmp_path):
    test = _write_cifar10(tmp_path)
    d = load_data("cifar10", data_dir=str(tmp_path), select_fraction=0.2)
    assert d.input_size == [3, 32, 32] and d.class_names[0] == "airplane" and d.aug == AugSpec(4, True)
    assert len(d.splits["train"]) + len(d.splits["select"]) == 100 and len(d.splits["test"]) == 10
    # CIFAR rows are channel-major 32x32 planes: the first 1024 bytes are the red plane
    assert d.splits["test"].images[0, 0].flatten().tolist() == test["data"][0, :1024].tolist()
    assert d.splits["test"].targets.tolist() == test["labels"]


def test_cifar_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(MoskdError, match="--download"):
        load_data("cifar100", data_dir=str(tmp_path))


def test_image_folder_dataset(tmp_path):
    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.new("RGB", (20 + i, 17), colour).save(tmp_path / c / f"{i}.png")
    d = load_data(f"folder:{tmp_path}", image_size=16, select_fraction=0.25, test_fraction=0.25)
    assert d.class_names == ["blue", "red"] and d.input_size == [3, 16, 16]
    assert sum(len(s) for s in d.splits.values()) == 12
    red = d.splits["train"].images[d.splits["train"].targets == 1]
    assert red[:, 0].float().mean() > 250 and red[:, 2].float().mean() < 5


def test_unknown_dataset_is_one_clear_error():
    with pytest.raises(MoskdError, match="unknown dataset 'mnist'"):
        load_data("mnist")


def test_normalisation_statistics_come_from_the_train_split_only():
    d = load_data("digits", limit=200)
    pixels = d.splits["train"].images.numpy().astype(np.float64) / 255.0
    assert d.mean == pytest.approx([pixels.mean()], rel=1e-5)
    assert d.std == pytest.approx([pixels.std(ddof=1)], rel=1e-4)
    other = np.concatenate([pixels, d.splits["select"].images.numpy() / 255.0])
    assert abs(other.mean() - pixels.mean()) > 1e-4  # select would have given another mean


def test_split_sizes_follow_the_fractions_by_hand():
    d = load_data("digits", select_fraction=0.25, test_fraction=0.2)
    n_test = math.ceil(1797 * 0.2)  # scikit-learn rounds the held-out share up
    assert len(d.splits["test"]) == n_test
    assert len(d.splits["select"]) == math.ceil((1797 - n_test) * 0.25)
    assert len(d.splits["train"]) == 1797 - n_test - len(d.splits["select"])


def test_split_seed_alone_moves_select_out_of_a_fixed_pool(tmp_path):
    """With an official test split the pool is fixed: only --split-seed can move `select`."""
    _write_cifar10(tmp_path)
    a, b = (load_data("cifar10", data_dir=str(tmp_path), split_seed=s) for s in (0, 1))
    assert _ids(a, "test") == _ids(b, "test")
    assert _ids(a, "select") != _ids(b, "select") and _ids(a, "select") | _ids(a, "train") == set(range(100))
    assert _ids(a, "select") == _ids(load_data("cifar10", data_dir=str(tmp_path), split_seed=0), "select")
