"""Op layer: one Python entry per op. It picks the backend, validates inputs and calls the kernel.

The optimizers call only these entries; they know nothing about backends.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import List, Set, Tuple

import torch

from . import _ext, agd, backends, reference
from . import triton as _triton
from .agd import power_iteration
from ._ext import cuda_extension_available, extension_available, load_extension

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
IMPLEMENTED_BACKENDS = ("reference", "cpu", "cuda", "triton")


def triton_available() -> bool:
    """Triton is importable, so backend='triton' can run (on CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1)."""
    return _triton.available()


def resolve_backend(backend: str) -> str:
    """Map a user's ``backend=`` choice to the backend that will run, or raise a clear error."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "auto"        # chosen per param group: the C++ kernels for CPU tensors when built
    if backend == "cpu" and not extension_available():
        raise RuntimeError(f"backend='cpu' needs the compiled extension hyperfused._C, which did not load "
                           f"({_ext.extension_error()}); build it with `pip install --no-build-isolation -e .`")
    if backend == "cuda" and not cuda_extension_available():
        raise NotImplementedError(
            "backend='cuda' needs the CUDA extension hyperfused._C_cuda, which is not built here "
            f"({_ext.cuda_extension_error()}); build with a CUDA build of torch and CUDA_HOME set "
            "(HYPERFUSED_CUDA=1 pip install --no-build-isolation -e .)")
    if backend == "triton" and not _triton.available():
        raise RuntimeError(f"backend='triton' needs the triton package, which did not import ({_triton.error()}); "
                           f"install it with `pip install triton`")
    if backend not in IMPLEMENTED_BACKENDS:
        raise NotImplementedError(
            f"backend={backend!r} is not implemented yet in this version of hyperfused; "
            f"use backend='auto', 'cpu' or 'reference'")
    return backend


class BackendFallbackWarning(UserWarning):
    """backend='auto' runs the pure-PyTorch reference because the compiled kernels are missing."""


_FALLBACK_WARNED: Set[Tuple[str, str]] = set()      # (device type, reason) already warned about in this process


def _warn_fallback(device_type: str, reason: str, message: str) -> None:
    if (device_type, reason) in _FALLBACK_WARNED:
        return
    _FALLBACK_WARNED.add((device_type, reason))
    # point at the caller's line (an optimizer.step()), past the frames of the ops, the optimizers and torch
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    inside = (os.path.join(package, "ops") + os.sep, os.path.join(package, "optim") + os.sep,
              os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, BackendFallbackWarning, stacklevel=level)


def auto_backend(device) -> str:
    """The backend that ``backend='auto'`` runs for a param group on ``device`` (a torch.device or its name):
    "cpu" (the C++ kernels) for CPU tensors when hyperfused._C loaded; for CUDA tensors "cuda" when the CUDA
    extension loaded, else "triton" when Triton imports; otherwise "reference", the pure-PyTorch ops.

    Falling back to the reference because those kernels are missing (for CPU tensors: the C++ extension; for
    CUDA tensors: both the CUDA extension and Triton) warns once per process, device type and reason, with a
    BackendFallbackWarning that names the cause and the fix; backend='reference' chooses the reference
    without a warning. Other device types have no compiled kernels: they run the reference without one."""
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type   # (every step)
    if dev == "cpu":
        if extension_available():
            return "cpu"
        _warn_fallback("cpu", "no C++ extension",
                       f"hyperfused: backend='auto' runs the pure-PyTorch reference ops (slower than the fused "
                       f"kernels) on CPU tensors, because the compiled extension hyperfused._C did not load "
                       f"({_ext.extension_error() or 'not built'}). Rebuild it with "
                       f"`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`); "
                       f"backend='reference' chooses the reference without this warning.")
        return "reference"
    if dev == "cuda":
        if cuda_extension_available():
            return "cuda"
        if triton_available():
            return "triton"
        _warn_fallback("cuda", "no CUDA extension and no Triton",
                       f"hyperfused: backend='auto' runs the pure-PyTorch reference ops (slower than the fused "
                       f"kernels) on CUDA tensors, because neither the CUDA extension hyperfused._C_cuda "
                       f"({_ext.cuda_extension_error()}) nor Triton ({_triton.error() or 'not importable'}) is "
                       f"available. Build the CUDA extension with `HYPERFUSED_CUDA=1 pip install "
                       f"--no-build-isolation -e .` (a CUDA build of torch, CUDA_HOME set) or install Triton "
                       f"(`pip install triton`); backend='reference' chooses the reference without this warning.")
        return "reference"
    return "reference"


def multi_tensor_dot(a: List[torch.Tensor], b: List[torch.Tensor]) -> torch.Tensor:
    """Deterministic per-pair dot products ``sum(a[i] * b[i])`` in float64, one value per pair.

    Runs the op ``torch.ops.hyperfused.multi_tensor_dot`` when its kernel is built for the tensors' device
    (the C++ extension for CPU, the CUDA extension for CUDA), the pure-PyTorch reference otherwise.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"multi_tensor_dot: got {len(a)} tensors in a and {len(b)} in b")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(f"multi_tensor_dot: pair {i} has shapes {tuple(x.shape)} and {tuple(y.shape)}")
    on_cpu = all(t.device.type == "cpu" for t in a + b)
    on_cuda = all(t.device.type == "cuda" for t in a + b)
    if (on_cpu and extension_available()) or (on_cuda and cuda_extension_available()):
        load_extension()
        return torch.ops.hyperfused.multi_tensor_dot(a, b)
    return reference.multi_tensor_dot(a, b)


__all__ = ["BACKENDS", "resolve_backend", "auto_backend", "backend_of", "backends", "BackendFallbackWarning", "multi_tensor_dot", "hyper_reduce", "hyper_update", "grads_finite",
           "reference", "extension_available", "cuda_extension_available", "triton_available", "power_iteration",
           "agd"]


def backend_of(name: str) -> backends.Backend:
    """The backend object for a resolved backend name ("reference", "cpu", "cuda", "triton")."""
    if name not in backends.BACKENDS:
        raise NotImplementedError(f"no {name!r} backend for the hypergradient ops")
    return backends.get(name)


def hyper_reduce(backend: str, kind: str, cfg: dict, learned, per_tensor_lr: bool, grads, states, valid, hp, raw,
                 inv_scale=None):
    """Pass A of a hypergradient step (see ``reference.hyper_reduce``) on the named backend. ``inv_scale``:
    GradScaler's 1 / scale (a one-element float64 tensor on the device) that the kernels multiply into every
    gradient element they read, so the gradients need not be unscaled in a pass of their own."""
    return backend_of(backend).reduce(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw,
                                                inv_scale=inv_scale)


def hyper_update(backend: str, kind: str, cfg: dict, learned, per_tensor_lr: bool, params, grads, states, hp, ok,
                 raw=None, jac=None, inv_scale=None):
    """Pass B of a hypergradient step (see ``reference.hyper_update``) on the named backend (``inv_scale`` as
    for ``hyper_reduce``)."""
    return backend_of(backend).update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok,
                                                raw=raw, jac=jac, inv_scale=inv_scale)


def grads_finite(backend: str, grads) -> torch.Tensor:
    """0-dim bool tensor: every element of every gradient is finite (one read of the gradients)."""
    return backend_of(backend).finite(grads)
