"""Loading the compiled extension (``hyperfused._C``), which registers the ``torch.ops.hyperfused`` ops, and
registering their fake implementations (``hyperfused.ops._fake``, for torch.compile) once it has loaded.

The package works without it: every op has a pure-PyTorch reference.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

_state = {"tried": False, "ok": False, "error": None, "fake_error": None}
BUILD_INFO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_build_info.json")


SOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")


def sources_digest(root: str = SOURCES):
    """A digest of the kernels' sources (every .h, .cuh, .cpp, .cu under csrc/, by path and content), recorded by
    the build; None where there is no csrc/ (an installed package)."""
    if not os.path.isdir(root):
        return None
    import hashlib
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".h", ".cuh", ".cpp", ".cu")):
                full = os.path.join(d, name)
                h.update(os.path.relpath(full, root).encode() + b"\0")
                with open(full, "rb") as f:
                    h.update(f.read() + b"\0")
    return h.hexdigest()


def build_mismatch(path: str = BUILD_INFO, sources: str = SOURCES):
    """Why the compiled extensions must not be loaded (None when they may): the build records the torch it compiled
    against, and the digest of the kernels' sources, in hyperfused/_build_info.json. An extension built against
    another torch either fails to load with an unreadable symbol error or, worse, loads and misbehaves; one built
    from other sources than the checkout's csrc/ (kernels edited or pulled since) silently runs the old kernels."""
    if not os.path.exists(path):
        return None
    import torch
    with open(path) as f:
        info = json.load(f)
    built = info.get("torch")
    rebuild = "rebuild them (pip install --no-build-isolation -e . or python setup.py build_ext --inplace)"
    if built != torch.__version__:
        return (f"hyperfused's compiled extensions were built against torch {built}, but this is torch "
                f"{torch.__version__}: {rebuild}")
    recorded = info.get("sources")
    if recorded is not None:
        now = sources_digest(sources)
        if now is not None and now != recorded:
            return (f"hyperfused's compiled extensions were built from other kernel sources than {sources} holds "
                    f"now (edited or updated since the build): {rebuild}")
    return None


def load_extension() -> bool:
    """Import ``hyperfused._C`` once; return whether it loaded."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            import torch  # noqa: F401  (the extension links against torch's libraries)
            mismatch = build_mismatch()
            if mismatch:
                raise ImportError(mismatch)
            importlib.import_module("hyperfused._C")
            _state["ok"] = True
        except ImportError as exc:  # not built (or built for another torch): the reference backend still works
            _state["error"] = exc
        if _state["ok"]:
            _register_fakes()
    return _state["ok"]


def _register_fakes() -> None:
    """The ops' fake implementations (tracing: torch.compile, torch.export, opcheck). A failure leaves the kernels
    usable in eager mode: it is kept in fake_error() and warned about, not raised."""
    try:
        from . import _fake
        _fake.register()
    except Exception as exc:  # noqa: BLE001 (any failure here must not take the eager kernels away)
        import warnings
        _state["fake_error"] = exc
        warnings.warn(f"hyperfused: the ops' fake implementations were not registered ({exc!r}); torch.compile "
                      f"cannot trace them", RuntimeWarning, stacklevel=3)


def fake_error():
    """Why the fake implementations were not registered (None when they were, or the extension did not load)."""
    load_extension()
    return _state["fake_error"]


def extension_available() -> bool:
    return load_extension()


def direct_ops():
    """``hyperfused._C``: besides registering the ops, it binds the passes' ops directly (csrc/ops.cpp), for eager
    calls. None when the extension did not load."""
    return sys.modules["hyperfused._C"] if load_extension() else None


def extension_error():
    """Why the extension did not load (None when it did)."""
    load_extension()
    return _state["error"]


_cuda_state = {"tried": False, "ok": False, "error": None, "fake_error": None}


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
