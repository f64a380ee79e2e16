"""Fashion-MNIST files, --image-size, --train-limit, stems and --device parsing."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from moskd.data import load_data
from moskd.datasets import resize_images
from moskd.datasets import FASHION_CLASSES, read_idx
from moskd.errors import MoskdError
from moskd.models import create_model
from moskd.profile import count_macs
from moskd.runtime import parse_device


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_fashion(folder, n_train=60, n_test=20, gz=True):
    """Official-format files: class c images are filled with 10 * c + position, so they are traceable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = (rng.integers(0, 50, (n, 28, 28)) + 20 * y[:, None, None]).astype(np.uint8)
        arrays[split] = (x, y)
        write_idx(folder / f"{split}-images-idx3-ubyte{'.gz' if gz else ''}", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{'.gz' if gz else ''}", y, gz)
    return arrays


def test_fashion_mnist_reads_the_official_files_flat(tmp_path):
    arrays = fake_fashion(tmp_path / "flat")
    d = load_data("fashion-mnist", str(tmp_path / "flat"), select_fraction=0.25)
    assert d.class_names == FASHION_CLASSES and d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"
    assert d.input_size == [1, 28, 28]
    assert len(d.splits["test"]) == 20 and len(d.splits["train"]) + len(d.splits["select"]) == 60
    # the official test file is `test`, in file order, pixel for pixel
    assert torch.equal(d.splits["test"].images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert d.splits["test"].targets.tolist() == arrays["t10k"][1].tolist()
    # every train/select image is one of the training file's, with its own label
    x, y = arrays["train"]
    for part in ("train", "select"):
        s = d.splits[part]
        assert torch.equal(s.images[:, 0], torch.from_numpy(x[s.index.numpy()]))
        assert s.targets.tolist() == y[s.index.numpy()].tolist()


def test_fashion_mnist_reads_torchvisions_layout_and_raw_files(tmp_path):
    fake_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    d = load_data("fashion-mnist", str(tmp_path / "tv"))
    assert len(d.splits["test"]) == 20


def test_missing_fashion_file_names_it_and_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr("moskd.datasets.DEBIAN_FASHION_DIR", str(tmp_path / "nowhere"))
    fake_fashion(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MoskdError) as e:
        load_data("fashion-mnist", str(tmp_path / "d"))
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "dataset-fashion-mnist" in msg and "--download" in msg


@pytest.mark.parametrize("damage", ["truncated_gzip", "bad_magic", "short_data"])
def test_corrupt_fashion_file_is_one_clear_error(tmp_path, damage):
    fake_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if damage == "truncated_gzip":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "bad_magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + raw[4:]))
    else:
        path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(MoskdError, match="train-images-idx3-ubyte.gz"):
        read_idx(path)


def test_image_size_resizes_every_dataset_and_keeps_grayscale():
    d = load_data("digits", image_size=16, limit=30)
    assert d.input_size == [1, 16, 16] and d.aug.pad == 2  # the 1-pixel shift scales with the image
    full = load_data("digits", limit=30)
    # a constant image stays constant; the mean ink survives a 2x bilinear upsampling closely
    assert abs(d.splits["train"].images.float().mean() - full.splits["train"].images.float().mean()) < 3
    x = np.full((2, 1, 28, 28), 77, np.uint8)
    assert (resize_images(x, 7) == 77).all() and resize_images(x, 7).shape == (2, 1, 7, 7)


def test_train_limit_shrinks_train_only(tmp_path):
    fake_fashion(tmp_path, n_train=200, n_test=30)
    d = load_data("fashion-mnist", str(tmp_path), select_fraction=0.2, train_limit=50)
    assert len(d.splits["train"]) == 50 and len(d.splits["select"]) == 40 and len(d.splits["test"]) == 30


def test_imagenet_stem_at_28x28_is_as_cheap_as_the_cifar_stem_at_8x8():
    for arch in ("densenet121", "googlenet"):  # ResNet50's stem is torchvision's own, untouched
        model = create_model(arch, 10, 1, stem="imagenet").eval()
        wide = count_macs(model, [1, 28, 28])
        small = count_macs(create_model(arch, 10, 1), [1, 8, 8])
        assert 0.4 * small < wide < 1.1 * small, arch  # 28x28 pixels in, 8x8-like cost
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # DenseNet: ceil-mode transitions, no crash
    with pytest.raises(MoskdError, match="--stem"):
        create_model("resnet50", 10, 1, stem="tiny")


@pytest.mark.parametrize("spec, count, rank, world, want", [
    ("cpu", 0, 0, 1, "cpu"), ("auto", 0, 0, 1, "cpu"), ("auto", 2, 0, 1, "cuda:0"),
    ("cuda", 1, 0, 1, "cuda:0"), ("cuda", 4, 3, 4, "cuda:3"), ("cuda:1", 2, 0, 1, "cuda:1"),
])
def test_device_strings_get_an_explicit_index(spec, count, rank, world, want):
    assert str(parse_device(spec, count, rank, world)) == want


@pytest.mark.parametrize("spec, count, words", [
    ("cuda", 0, "no CUDA device"), ("cuda:2", 2, "0..1"), ("gpu", 1, "choose auto"), ("cuda:x", 1, "0..0"),
])
def test_bad_device_strings_are_refused(spec, count, words):
    with pytest.raises(MoskdError, match=words):
        parse_device(spec, count)
