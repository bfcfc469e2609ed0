"""The "triton" backend: Triton kernels of the hypergradient passes (hyper.py) and of AGD (agd.py).

They run on CUDA tensors, and on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set
before hyperfused is imported), which is how the tests check them on machines without a GPU. Importing this
package does not import Triton; ``kernels()`` does, on first use.
"""
from __future__ import annotations

import importlib
import os

_state = {"tried": False, "module": None, "error": None}


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (CPU tensors), as TRITON_INTERPRET says."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Triton is importable (the kernels compile lazily, per configuration, at first launch)."""
    return kernels() is not None


def error():
    kernels()
    return _state["error"]


def kernels():
    """The kernel module ``hyperfused.ops.triton.hyper``, or None when Triton cannot be imported."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = importlib.import_module(".hyper", __name__)
        except ImportError as exc:
            _state["error"] = exc
    return _state["module"]
