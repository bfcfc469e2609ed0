"""Loading the compiled extension (``hyperfused._C``), which registers the ``torch.ops.hyperfused`` ops.

The package works without it: every op has a pure-PyTorch reference.
"""
from __future__ import annotations

import importlib

_state = {"tried": False, "ok": False, "error": None}


def load_extension() -> bool:
    """Import ``hyperfused._C`` once; return whether it loaded."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            import torch  # noqa: F401  (the extension links against torch's libraries)
            importlib.import_module("hyperfused._C")
            _state["ok"] = True
        except ImportError as exc:  # not built: the reference backend still works
            _state["error"] = exc
    return _state["ok"]


def extension_available() -> bool:
    return load_extension()


def extension_error():
    """Why the extension did not load (None when it did)."""
    load_extension()
    return _state["error"]


_cuda_state = {"tried": False, "ok": False, "error": None}


def cuda_extension_available() -> bool:
    """Import ``hyperfused._C_cuda`` (the CUDA kernels) once; True when it loaded."""
    if not _cuda_state["tried"]:
        _cuda_state["tried"] = True
        if load_extension():             # the schemas come from hyperfused._C
            try:
                importlib.import_module("hyperfused._C_cuda")
                _cuda_state["ok"] = True
            except ImportError as exc:
                _cuda_state["error"] = exc
        else:
            _cuda_state["error"] = _state["error"]
    return _cuda_state["ok"]


def cuda_extension_error():
    cuda_extension_available()
    return _cuda_state["error"] or "not built"
