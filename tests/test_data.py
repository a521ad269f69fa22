"""Tests for engine/data.py: MNIST, static binarization, and where the files come from.

The real-data tests use data.data_root() (DATA_DIR, or $HW2_DATA) and fetch MNIST through
the real chain on first use. The fallback tests run in temporary roots with the network
sources patched out.
"""

import errno
import hashlib
import os

import numpy as np
import pytest
import torch
import torchvision

from engine import data
from engine import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    assert data.data_root() == os.path.join(ROOT, data.DATA_DIR)  # the repository root, beside models.py


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
    x, y = data.load_mnist(False, root=tmp_path, return_labels=True)
    assert torch.equal(x, images.unsqueeze(1).float() / 255) and torch.equal(y, labels)


def test_cached_set_in_other_formats_is_accepted(tmp_path, offline, bmnist):
    canonical = bmnist[False]  # (10000, 1, 28, 28) float32
    labels = torch.zeros(len(canonical), dtype=torch.int64)
    path = tmp_path / "bmnist_test.pt"
    for saved in ((canonical.long(), labels),             # int64 (N, 1, 28, 28) in a tuple
                  canonical[:, 0].bool(),                 # bool (N, 28, 28), bare
                  canonical):                             # float32 (N, 1, 28, 28)
        torch.save(saved, path)
        b = data.load_binarized_mnist(False, root=tmp_path)
        assert b.dtype == torch.float32 and torch.equal(b, canonical)


def test_course_images_that_are_not_mnist_are_refused(tmp_path, offline):
    # the course layout is not hash-checked: binarizing other images cannot give the pinned bits
    (tmp_path / "processed").mkdir()
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    torch.save((images, torch.arange(50) % 10), tmp_path / "processed" / "test.pt")
    with pytest.raises(data.MNISTFileError, match="not the original MNIST test set") as err:
        data.load_binarized_mnist(False, root=tmp_path)
    assert str(tmp_path / "processed") in str(err.value)
    assert not (tmp_path / "bmnist_test.pt").exists()


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


# ---------------------------------------------------------------------------
# Cached binarized sets are the pinned bits


@pytest.fixture
def raw_root(tmp_path, mnist):
    """A fresh data directory holding only the four raw IDX files (links to the real ones)."""
    real = os.path.join(data.data_root(), "MNIST", "raw")
    if not all(os.path.exists(os.path.join(real, name)) for name in data.RAW_SHA256):
        pytest.skip(f"needs the raw MNIST files in {real}")
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.RAW_SHA256:
        (raw / name).symlink_to(os.path.join(real, name))
    return tmp_path / "root"


def test_pinned_digests_match_the_tests():
    assert data.BMNIST_SHA256 == {"train": BMNIST_TRAIN_SHA256, "test": BMNIST_TEST_SHA256}


def wrong_test_set(kind, canonical):
    """A well-formed binarized test set that is not the canonical one."""
    bits = canonical[:, 0].to(torch.uint8)  # (10000, 28, 28)
    if kind == "zeros":
        return torch.zeros_like(bits)
    if kind == "flipped":
        bits = bits.clone()
        bits[1234, 14, 14] ^= 1
        return bits
    return bits[:7]


@pytest.mark.parametrize("kind", ["zeros", "flipped", "seven images"])
def test_wrong_cached_set_is_rebuilt(kind, raw_root, offline, bmnist, capsys):
    path = raw_root / "bmnist_test.pt"
    torch.save(wrong_test_set(kind, bmnist[False]), path)
    b = data.load_binarized_mnist(False, root=raw_root)
    out = capsys.readouterr().out
    assert f"{path} holds" in out and "rebuilding" in out
    assert torch.equal(b, bmnist[False]) and sha256_bits(b) == BMNIST_TEST_SHA256
    # the cache now holds the pinned bits and is used without a message
    assert sha256_bits(torch.load(path)) == BMNIST_TEST_SHA256
    data.load_binarized_mnist(False, root=raw_root)
    assert capsys.readouterr().out == ""


def test_flipped_byte_in_the_file_is_rebuilt(raw_root, offline, bmnist, capsys):
    path = raw_root / "bmnist_test.pt"
    torch.save(bmnist[False][:, 0].to(torch.uint8), path)
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF  # inside the tensor's bytes: a 0/1 byte becomes 254/255
    path.write_bytes(bytes(content))
    b = data.load_binarized_mnist(False, root=raw_root)
    assert str(path) in capsys.readouterr().out
    assert sha256_bits(b) == BMNIST_TEST_SHA256


def test_wrong_cached_set_without_mnist_files_is_refused(tmp_path, offline, bmnist):
    path = tmp_path / "bmnist_test.pt"
    torch.save(wrong_test_set("seven images", bmnist[False]), path)
    before = path.read_bytes()
    with pytest.raises(data.MNISTFileError) as err:
        data.load_binarized_mnist(False, root=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "7 images" in msg and BMNIST_TEST_SHA256 in msg and "delete" in msg
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------
# An unwritable data directory: the cache is optional


def test_read_only_data_directory_is_used_without_a_cache(raw_root, offline, bmnist):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories; test_unwritable_cache_is_a_warning simulates it")
    os.chmod(raw_root, 0o555)
    try:
        with pytest.warns(RuntimeWarning, match="could not cache") as caught:
            b = data.load_binarized_mnist(False, root=raw_root)
        assert str(raw_root) in str(caught[0].message)
    finally:
        os.chmod(raw_root, 0o755)
    assert torch.equal(b, bmnist[False])
    assert os.listdir(raw_root) == ["MNIST"]


def test_unwritable_cache_is_a_warning(raw_root, offline, bmnist, monkeypatch, recwarn):
    """A read-only file system refuses to create the temporary file: simulated for root too."""
    def read_only_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", file)
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", read_only_open, raising=False)  # where every file is written
    for _ in range(2):
        b = data.load_binarized_mnist(False, root=raw_root)
        assert torch.equal(b, bmnist[False])
    warned = [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == 1  # once per directory
    msg = str(warned[0].message)
    assert "could not cache" in msg and str(raw_root) in msg and "Read-only file system" in msg
    assert os.listdir(raw_root) == ["MNIST"]  # no cache, no temporary file


# ---------------------------------------------------------------------------
# atomic_save and clean_stale_tmp


def tmp_files(directory):
    return [f for f in os.listdir(directory) if f.endswith(".tmp")]


def test_atomic_save_roundtrip_creates_directories_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "checkpoint.pt"
    files.atomic_save({"step": 1, "w": torch.arange(5)}, path)
    files.atomic_save({"step": 2, "w": torch.arange(6)}, str(path))
    loaded = torch.load(path)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(6))
    assert os.listdir(path.parent) == ["checkpoint.pt"]


def partial_write_then(error):
    """A torch.save that writes some bytes, then fails as a full disk does."""
    def save(obj, f):
        f.write(b"partial")
        f.flush()
        raise error
    return save


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 0"),
], ids=["ENOSPC", "unexpected-pos"])
def test_atomic_save_on_a_full_disk_names_the_file(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    files.atomic_save(torch.ones(3), path)
    monkeypatch.setattr(torch, "save", partial_write_then(error))
    with pytest.raises(files.DiskFullError) as err:
        files.atomic_save(torch.zeros(3), path)
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert str(path) in str(err.value) and "disk is full" in str(err.value)
    assert err.value.__cause__ is error
    monkeypatch.undo()
    assert tmp_files(tmp_path) == []
    assert torch.equal(torch.load(path), torch.ones(3))  # the old file is intact


def test_atomic_save_other_failures_keep_their_type_and_clean_up(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    with pytest.raises(Exception) as err:
        files.atomic_save(lambda: None, path)  # not picklable
    assert not isinstance(err.value, OSError)
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(torch, "save", partial_write_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        files.atomic_save(torch.zeros(1), path)
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(torch, "save", partial_write_then(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match=f"could not write {path}: Input/output error") as err:
        files.atomic_save(torch.zeros(1), path)
    assert err.value.errno == errno.EIO and not isinstance(err.value, files.DiskFullError)
    assert os.listdir(tmp_path) == []


DEAD_PID = 99_999_999  # above Linux's largest possible pid (2**22)


def test_clean_stale_tmp_removes_only_dead_writers_files(tmp_path, capsys):
    host = files._HOST_TAG
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    stale = [f"ckpt.pt.{DEAD_PID}.0123abcd.h{host}.tmp",
             f"bmnist_test.pt.{DEAD_PID}.89abcdef.tmp"]  # written before the host tag
    kept = [f"ckpt.pt.{os.getpid()}.0123abcd.h{host}.tmp",   # a live writer
            f"ckpt.pt.{DEAD_PID}.0123abcd.h{other_host}.tmp",  # another host's writer
            "notes.tmp", "ckpt.pt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = files.clean_stale_tmp(tmp_path)
    assert sorted(removed) == sorted(str(tmp_path / name) for name in stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert str(tmp_path / stale[0]) in capsys.readouterr().out
    assert files.clean_stale_tmp(tmp_path / "missing") == []


def test_atomic_save_temporary_files_are_recognised(tmp_path, monkeypatch):
    # the name atomic_save gives its temporary file is one clean_stale_tmp would remove once its writer dies
    names = []
    monkeypatch.setattr(data.os, "replace", lambda src, dst: names.append(os.path.basename(src)))
    files.atomic_save(torch.zeros(1), tmp_path / "c.pt")
    m = files._TMP_PATTERN.match(names[0])
    assert m and m["target"] == "c.pt" and int(m["pid"]) == os.getpid() and m["host"] == files._HOST_TAG


def test_stale_tmp_files_are_cleaned_when_loading(tmp_path, offline, mnist):
    images, labels = mnist[False]
    (tmp_path / "processed").mkdir()
    torch.save((images, labels), tmp_path / "processed" / "test.pt")
    stale = tmp_path / f"bmnist_test.pt.{DEAD_PID}.0123abcd.tmp"  # as a killed writer leaves it
    stale.write_bytes(b"partial")
    data.load_binarized_mnist(False, root=tmp_path)
    assert not stale.exists() and tmp_files(tmp_path) == []


# ---------------------------------------------------------------------------
# Requirements


def test_requirements_admit_the_installed_scipy():
    """The course framework's binaryvae.ipynb imports scipy.special.logsumexp."""
    specifiers = pytest.importorskip("packaging.specifiers")
    scipy = pytest.importorskip("scipy")
    from scipy.special import logsumexp  # noqa: F401
    path = os.path.join(ROOT, "requirements.txt")
    with open(path) as f:
        lines = [line.split("#")[0].strip() for line in f]
    scipy_lines = [line for line in lines if line.startswith("scipy")]
    assert len(scipy_lines) == 1, f"requirements.txt should list scipy once, got {scipy_lines}"
    spec = specifiers.SpecifierSet(scipy_lines[0][len("scipy"):])
    assert spec.contains(scipy.__version__), f"{scipy_lines[0]} excludes the installed scipy {scipy.__version__}"
