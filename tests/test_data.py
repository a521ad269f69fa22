"""Tests for data.py: MNIST, static binarization, and where the files come from.

The real-data tests use data.data_root() (DATA_DIR, or $HW2_DATA) and fetch MNIST through
the real chain on first use. The fallback tests run in temporary roots with the network
sources patched out.
"""

import hashlib
import os

import numpy as np
import pytest
import torch
import torchvision

import data

# SHA-256 of the statically binarized bits, uint8 (N, 28, 28) in C order, from
# data.binarize(mnist_uint8(train), data.binarize_seed(train)) with BINARIZE_SEED = 599.
BMNIST_TEST_SHA256 = "a136ee28bc8e89165e4174da2668c9dbdd91b28cf03a0e1644286a5adcb966c7"
BMNIST_TRAIN_SHA256 = "76ecd7b82f334302c62c48e8d06b7fab11fb5c18e86bc0363cf76fcc769ac228"


def sha256_bits(bits):
    return hashlib.sha256(bits.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def mnist():
    """Real MNIST {train: (images uint8, labels)} from the repo's data directory."""
    return {train: data.mnist_uint8(train) for train in (True, False)}


@pytest.fixture(scope="module")
def bmnist():
    return {train: data.load_binarized_mnist(train) for train in (True, False)}


@pytest.fixture
def offline(monkeypatch):
    """Make torchvision's download fail and hide npm, so only local files can serve."""
    def fail(self):
        raise RuntimeError("network unreachable (patched)")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    monkeypatch.setattr(data.shutil, "which", lambda name: None)


# ---------------------------------------------------------------------------
# Real data


@pytest.mark.parametrize("train,n", [(True, 60000), (False, 10000)])
def test_mnist_shapes_and_range(train, n):
    x, y = data.load_mnist(train, return_labels=True)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    assert y.shape == (n,) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    assert torch.equal(data.load_mnist(train), x)


@pytest.mark.parametrize("train,n", [(True, 60000), (False, 10000)])
def test_binarized_shapes_values_mean(train, n, mnist, bmnist):
    b = bmnist[train]
    assert b.shape == (n, 1, 28, 28) and b.dtype == torch.float32
    assert bool(((b == 0) | (b == 1)).all())
    mean_intensity = mnist[train][0].double().mean().item() / 255
    assert abs(b.mean().item() - mean_intensity) < 0.01


def test_binarization_deterministic_and_pinned(mnist):
    for train, pinned in ((False, BMNIST_TEST_SHA256), (True, BMNIST_TRAIN_SHA256)):
        images = mnist[train][0]
        first = data.binarize(images, data.binarize_seed(train))
        second = data.binarize(images, data.binarize_seed(train))
        assert torch.equal(first, second)
        assert sha256_bits(first) == pinned
    assert data.binarize_seed(True) != data.binarize_seed(False)


def test_binarize_chunks_match_one_draw():
    images = torch.randint(0, 256, (25, 28, 28), dtype=torch.uint8)
    u = np.random.default_rng(7).random((25, 28, 28))
    expected = torch.from_numpy((u < images.numpy() / 255.0).astype(np.uint8))
    assert torch.equal(data.binarize(images, 7, chunk=4), expected)
    assert torch.equal(data.binarize(images, 7), expected)


def test_binarized_cache_roundtrip(tmp_path, mnist, offline, capsys):
    images, labels = mnist[False]
    (tmp_path / "processed").mkdir()
    torch.save((images, labels), tmp_path / "processed" / "test.pt")
    generated = data.load_binarized_mnist(False, root=tmp_path)
    assert "binarizing" in capsys.readouterr().out
    assert (tmp_path / "bmnist_test.pt").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    cached = data.load_binarized_mnist(False, root=tmp_path)
    assert torch.equal(generated, cached)
    assert sha256_bits(cached) == BMNIST_TEST_SHA256


# ---------------------------------------------------------------------------
# Where the files come from


def test_data_root_override(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "env"))
    assert data.data_root() == str(tmp_path / "env")
    assert data.data_root(tmp_path / "arg") == str(tmp_path / "arg")
    monkeypatch.delenv(data.DATA_ENV)
    assert data.data_root() == os.path.join(os.path.dirname(os.path.abspath(data.__file__)), data.DATA_DIR)


def test_nothing_found_lists_sources(tmp_path, offline):
    with pytest.raises(data.MNISTNotFoundError) as err:
        data.load_mnist(False, root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for tried in ("course layout", "torchvision layout", "torchvision download", "network unreachable",
                  "npm", "not on the PATH"):
        assert tried in msg
    for name in data.RAW_SHA256:
        assert name in msg
    assert os.path.join(str(tmp_path), "MNIST", "raw") in msg


def test_course_layout_is_used(tmp_path, offline):
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    (tmp_path / "processed").mkdir()
    torch.save((images, labels), tmp_path / "processed" / "test.pt")
    bits_test = torch.randint(0, 2, (50, 1, 28, 28))  # int64, in a tuple
    torch.save((bits_test, labels), tmp_path / "bmnist_test.pt")
    bits_train = torch.randint(0, 2, (30, 28, 28)).bool()  # bool, bare tensor
    torch.save(bits_train, tmp_path / "bmnist_train.pt")

    x, y = data.load_mnist(False, root=tmp_path, return_labels=True)
    assert torch.equal(x, images.unsqueeze(1).float() / 255) and torch.equal(y, labels)
    b = data.load_binarized_mnist(False, root=tmp_path)
    assert b.dtype == torch.float32 and torch.equal(b, bits_test.float())
    b = data.load_binarized_mnist(True, root=tmp_path)
    assert b.shape == (30, 1, 28, 28) and torch.equal(b, bits_train.unsqueeze(1).float())


def test_raw_file_with_wrong_hash_is_rejected(tmp_path, offline):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.RAW_SHA256:
        (raw / name).write_bytes(b"not mnist")
    with pytest.raises(data.MNISTFileError) as err:
        data.load_mnist(True, root=tmp_path)
    msg = str(err.value)
    name = next(iter(data.RAW_SHA256))
    assert str(raw / name) in msg
    assert data.RAW_SHA256[name] in msg
    assert hashlib.sha256(b"not mnist").hexdigest() in msg
    assert "delete" in msg


def test_corrupt_binarized_cache_is_an_error(tmp_path, offline):
    path = tmp_path / "bmnist_test.pt"
    torch.save(torch.randint(0, 2, (100, 28, 28), dtype=torch.uint8), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(data.MNISTFileError, match="delete"):
        data.load_binarized_mnist(False, root=tmp_path)

    torch.save(torch.full((100, 28, 28), 0.5), path)  # not binary
    with pytest.raises(data.MNISTFileError, match="other than 0 and 1"):
        data.load_binarized_mnist(False, root=tmp_path)

    torch.save(torch.zeros(100, 32, 32), path)  # wrong shape
    with pytest.raises(data.MNISTFileError, match="shape"):
        data.load_binarized_mnist(False, root=tmp_path)
