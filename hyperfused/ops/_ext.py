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
